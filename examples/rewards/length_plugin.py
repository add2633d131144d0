"""A reward plugin: a completion as long as its reference scores 1, one too short or too long less.

LengthMatch scores 1 - |len(completion) - len(reference)| / (tolerance * len(reference)), floored at 0, in
characters, and None where the reference is empty: the trainer then leaves that sample out of this component
instead of scoring it 0. It is built once per rank with `reward.kwargs.<name>` as keyword arguments, then called
with each generated batch's prompts, completions and references (that rank's share). Use it with the folder of
this file on PYTHONPATH (every rank imports it):

    PYTHONPATH=examples/rewards deepspeed bin/train_grpo.py \
        "reward.functions=[semantic, language, lenmatch=length_plugin:LengthMatch]" \
        reward.weights.lenmatch=0.5 "reward.kwargs.lenmatch={tolerance: 0.3}"
"""


class LengthMatch:
    def __init__(self, tolerance: float = 0.5):
        self.tolerance = tolerance

    def __call__(self, prompts, completions, references):
        scores = []
        for completion, reference in zip(completions, references):
            wanted = len(reference.strip())
            if wanted == 0:
                scores.append(None)  # does not apply: left out of this component
            else:
                miss = abs(len(completion.strip()) - wanted) / (self.tolerance * wanted)
                scores.append(max(0.0, 1.0 - miss))
        return scores
