"""A reward server: the share of distinct characters in each completion (low for a completion that repeats
itself), None for an empty one. Standard library only.

    python examples/rewards/reward_server.py 8000 &
    deepspeed bin/train_grpo.py "reward.functions=[semantic, language, http://127.0.0.1:8000/score]" \
        reward.weights.remote=0.5
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def score(prompts, completions, references):
    return [len(set(c)) / len(c) if c else None for c in completions]


class RewardHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        batch = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        reply = json.dumps(score(batch["prompts"], batch["completions"], batch["references"])).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    ThreadingHTTPServer(("127.0.0.1", port), RewardHandler).serve_forever()
