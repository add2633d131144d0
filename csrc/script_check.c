/*
 * semgrpo._script_check: count the code points of Python str objects per character class.
 *
 * The Python side (semgrpo/script/) owns the definition of the classes: it passes a flat table of
 * 0x110000 bytes, the class index of every code point. semgrpo.script.tables builds it from the
 * ranges generated from the Unicode Character Database (one class per script, then the neutral
 * classes: 176 in Unicode 17), or, for a consistency check, three classes (target letter, foreign
 * letter, neutral). Nothing about scripts or letters is written here, so a new Unicode version
 * needs no change in this file.
 *
 * profile(texts, table, nclasses, out)
 *     texts     list or tuple of str (anything else in it: TypeError naming index and type)
 *     table     contiguous buffer of 0x110000 bytes, every byte < nclasses
 *     nclasses  1..255
 *     out       writable C-contiguous int64 buffer of len(texts) * nclasses items
 *     -> None;  out[i * nclasses + k] = number of code points of texts[i] in class k.
 *
 * Each str is read in its own PEP 393 storage (UCS1/UCS2/UCS4), never encoded. Under the GIL
 * we check the items, take a reference to each (so that another thread mutating the list
 * cannot free a string we are reading) and copy (data, kind, length); then we count with the
 * GIL released when the batch is large enough to be worth it, and drop the references.
 * Lone surrogates are ordinary code points here (the table puts them in the last class).
 *
 * Counting: with at most 8 classes (a consistency check) each code point costs one table load and
 * one shift+add into a register of 8 packed byte counters (4 interleaved lanes, flushed every 255
 * code points per lane); 9..16 classes use two such registers; more (the full profile) use 8
 * interleaved memory counters per class.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define TABLE_SIZE 0x110000
#define MAX_CLASSES 256
#define LANES 4
/* Below this many code points in the whole batch, keep the GIL (releasing costs more). */
#define GIL_RELEASE_MIN 2048

typedef struct {
    PyObject *obj; /* strong reference held while counting */
    const void *data;
    Py_ssize_t len;
    int kind;
} item_t;

/* General path (more than 16 classes): HLANES independent counters per class, so that a run of one
 * class does not serialize on one counter. The lanes of a class sit side by side (h[class][lane]):
 * lanes kept a whole histogram apart would lie 4 KiB apart, and the CPU then mistakes their loads
 * for stores in flight to the same address (4K aliasing), which halved the speed. */
#define HLANES 8
typedef uint64_t hist_t[MAX_CLASSES][HLANES];

#define HIST_LOOP(LOAD)                                                                        \
    do {                                                                                       \
        Py_ssize_t i = 0;                                                                      \
        for (; i + HLANES <= n; i += HLANES) {                                                 \
            h[table[LOAD(i)]][0]++;                                                            \
            h[table[LOAD(i + 1)]][1]++;                                                        \
            h[table[LOAD(i + 2)]][2]++;                                                        \
            h[table[LOAD(i + 3)]][3]++;                                                        \
            h[table[LOAD(i + 4)]][4]++;                                                        \
            h[table[LOAD(i + 5)]][5]++;                                                        \
            h[table[LOAD(i + 6)]][6]++;                                                        \
            h[table[LOAD(i + 7)]][7]++;                                                        \
        }                                                                                      \
        for (; i < n; i++)                                                                     \
            h[table[LOAD(i)]][0]++;                                                            \
    } while (0)

/* Fast path (at most 16 classes): packed byte counters kept in registers. Class c adds
 * 1 << 8*(c%8) to lo (c < 8) or hi (c >= 8) of its lane; every lane sees at most PACK_BLOCK
 * code points before its bytes are flushed into h[0], so no byte overflows. */
#define PACK_BLOCK 255

/* Add the packed byte counters of the LANES lanes to acc[0..7]: spread even and odd bytes to
 * 16-bit fields (4 lanes * 255 fits), sum the lanes, then extract the 8 sums. */
static inline void
pack_flush(const uint64_t *v, uint64_t *acc)
{
    const uint64_t m = 0x00FF00FF00FF00FFULL;
    uint64_t even = 0, odd = 0;
    for (int l = 0; l < LANES; l++) {
        even += v[l] & m;
        odd += (v[l] >> 8) & m;
    }
    for (int k = 0; k < 4; k++) {
        acc[2 * k] += (even >> (16 * k)) & 0xFFFF;
        acc[2 * k + 1] += (odd >> (16 * k)) & 0xFFFF;
    }
}
#define PACK_ADD(LANE, C)                                                                      \
    do {                                                                                       \
        uint64_t c_ = (C);                                                                     \
        uint64_t inc_ = (uint64_t)1 << ((c_ & 7) << 3);                                        \
        uint64_t m_ = (uint64_t)0 - ((c_ >> 3) & 1);                                           \
        lo[LANE] += inc_ & ~m_;                                                                \
        hi[LANE] += inc_ & m_;                                                                 \
    } while (0)

/* At most 8 classes (the default table): only lo. The mask keeps a bad byte in range. */
#define PACK_ADD8(LANE, C) (lo[LANE] += (uint64_t)1 << (((C) & 7) << 3))

#define PACK_LOOP(LOAD, ADD)                                                                       \
    do {                                                                                       \
        Py_ssize_t i = 0;                                                                      \
        while (i < n) {                                                                        \
            Py_ssize_t end = (n - i > LANES * PACK_BLOCK) ? i + LANES * PACK_BLOCK : n;        \
            uint64_t lo[LANES] = {0, 0, 0, 0}, hi[LANES] = {0, 0, 0, 0};                       \
            for (; i + LANES <= end; i += LANES) {                                             \
                ADD(0, table[LOAD(i)]);                                                        \
                ADD(1, table[LOAD(i + 1)]);                                                    \
                ADD(2, table[LOAD(i + 2)]);                                                    \
                ADD(3, table[LOAD(i + 3)]);                                                    \
            }                                                                                  \
            for (int l = 0; i < end; i++, l++) /* < LANES left: one per lane, none overflows */ \
                ADD(l, table[LOAD(i)]);                                                        \
            pack_flush(lo, acc);                                                                 \
            if ((hi[0] | hi[1] | hi[2] | hi[3]) != 0)                                          \
                pack_flush(hi, acc + 8);                                                         \
        }                                                                                      \
    } while (0)

/* A valid str never holds a code point above U+10FFFF; clamp anyway so a corrupt one cannot
 * read outside the table (it reads the entry of U+10FFFF, a noncharacter). */
#define LOAD1(i) (((const Py_UCS1 *)data)[i])
#define LOAD2(i) (((const Py_UCS2 *)data)[i])
#define LOAD4(i) (((const Py_UCS4 *)data)[i] < TABLE_SIZE ? ((const Py_UCS4 *)data)[i] : TABLE_SIZE - 1)

/* Packed path for one string: counts go straight to its row (at most 16 classes). */
static void
count_packed(const void *data, int kind, Py_ssize_t n, const uint8_t *table, int nclasses,
             int64_t *row)
{
    uint64_t acc[16] = {0};
    if (nclasses <= 8) {
        if (kind == PyUnicode_1BYTE_KIND) PACK_LOOP(LOAD1, PACK_ADD8);
        else if (kind == PyUnicode_2BYTE_KIND) PACK_LOOP(LOAD2, PACK_ADD8);
        else PACK_LOOP(LOAD4, PACK_ADD8);
    } else {
        if (kind == PyUnicode_1BYTE_KIND) PACK_LOOP(LOAD1, PACK_ADD);
        else if (kind == PyUnicode_2BYTE_KIND) PACK_LOOP(LOAD2, PACK_ADD);
        else PACK_LOOP(LOAD4, PACK_ADD);
    }
    for (int k = 0; k < nclasses; k++)
        row[k] = (int64_t)acc[k];
}

/* General path for one string; h is all zero on entry and on return (entries < nclasses). */
static void
count_hist(const void *data, int kind, Py_ssize_t n, const uint8_t *table, int nclasses,
           int64_t *row, hist_t h)
{
    if (kind == PyUnicode_1BYTE_KIND) HIST_LOOP(LOAD1);
    else if (kind == PyUnicode_2BYTE_KIND) HIST_LOOP(LOAD2);
    else HIST_LOOP(LOAD4);
    for (int k = 0; k < nclasses; k++) {
        uint64_t sum = 0;
        for (int l = 0; l < HLANES; l++) {
            sum += h[k][l];
            h[k][l] = 0;
        }
        row[k] = (int64_t)sum;
    }
}

/* Count every item into its row of out. Needs no GIL. */
static void
count_all(const item_t *items, Py_ssize_t n, const uint8_t *table, int nclasses, int64_t *out,
          hist_t h)
{
    memset(h, 0, sizeof(hist_t));
    for (Py_ssize_t i = 0; i < n; i++) {
#if defined(__GNUC__)
        if (i + 2 < n) /* strings are separate heap objects: fetch ahead */
            __builtin_prefetch(items[i + 2].data);
#endif
        int64_t *row = out + i * (Py_ssize_t)nclasses;
        if (nclasses <= 16)
            count_packed(items[i].data, items[i].kind, items[i].len, table, nclasses, row);
        else
            count_hist(items[i].data, items[i].kind, items[i].len, table, nclasses, row, h);
    }
}

/* The table is checked (every byte < nclasses) once per (buffer, nclasses), under the GIL; the
 * Python side passes one cached read-only array, so this costs one scan per process. A table
 * that changes after the check gives wrong counts but never an out-of-bounds access: counters
 * are indexed by a byte (MAX_CLASSES entries) or masked (packed path). */
static const void *checked_buf = NULL;
static int checked_nclasses = 0;

static int
check_table(const Py_buffer *table, int nclasses)
{
    if (table->buf == checked_buf && nclasses == checked_nclasses)
        return 0;
    const uint8_t *t = (const uint8_t *)table->buf;
    uint8_t mx = 0;
    for (Py_ssize_t i = 0; i < TABLE_SIZE; i++)
        mx = t[i] > mx ? t[i] : mx;
    if (mx >= nclasses) {
        PyErr_Format(PyExc_ValueError, "table holds class index %d, expected < nclasses = %d",
                     (int)mx, nclasses);
        return -1;
    }
    checked_buf = table->buf;
    checked_nclasses = nclasses;
    return 0;
}

static PyObject *
profile(PyObject *self, PyObject *args)
{
    PyObject *texts, *table_obj, *out_obj;
    int nclasses;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOiO:profile", &texts, &table_obj, &nclasses, &out_obj))
        return NULL;
    if (!PyList_Check(texts) && !PyTuple_Check(texts)) {
        PyErr_Format(PyExc_TypeError, "texts must be a list or tuple of str, got %.200s",
                     Py_TYPE(texts)->tp_name);
        return NULL;
    }
    if (nclasses < 1 || nclasses >= MAX_CLASSES) {
        PyErr_Format(PyExc_ValueError, "nclasses must be in [1, %d], got %d", MAX_CLASSES - 1,
                     nclasses);
        return NULL;
    }

    Py_buffer table = {0}, out = {0};
    item_t *items = NULL;
    hist_t *hist = NULL;
    Py_ssize_t n = 0, held = 0, total_len = 0;
    PyObject *result = NULL;
    PyObject **objs;

    if (PyObject_GetBuffer(table_obj, &table, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (table.len != TABLE_SIZE) {
        PyErr_Format(PyExc_ValueError, "table must hold %d bytes, got %zd", TABLE_SIZE, table.len);
        goto done;
    }
    if (check_table(&table, nclasses) < 0)
        goto done;
    if (PyObject_GetBuffer(out_obj, &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        goto done;

    /* The container cannot change under us: no Python code runs until the counting is done. */
    n = PySequence_Fast_GET_SIZE(texts);
    {
        const char *fmt = out.format ? out.format : "B";
        if (out.itemsize != 8 || strchr("qlQL", fmt[fmt[0] == '<' || fmt[0] == '=' ? 1 : 0]) == NULL) {
            PyErr_Format(PyExc_TypeError, "out must be an int64 buffer, got format %.20s itemsize %zd",
                         fmt, out.itemsize);
            goto done;
        }
        if (out.len != n * (Py_ssize_t)nclasses * 8) {
            PyErr_Format(PyExc_ValueError, "out must hold len(texts) * nclasses = %zd items, got %zd",
                         n * (Py_ssize_t)nclasses, out.len / 8);
            goto done;
        }
    }
    if (n == 0) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    items = PyMem_Malloc((size_t)n * sizeof(item_t));
    hist = PyMem_Malloc(sizeof(hist_t));
    if (items == NULL || hist == NULL) {
        PyErr_NoMemory();
        goto done;
    }

    objs = PySequence_Fast_ITEMS(texts);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *s = objs[i];
#if defined(__GNUC__)
        if (i + 4 < n)
            __builtin_prefetch(objs[i + 4]);
#endif
        if (!PyUnicode_Check(s)) {
            PyErr_Format(PyExc_TypeError, "texts[%zd] must be str, got %.200s", i, Py_TYPE(s)->tp_name);
            goto done;
        }
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(s) < 0)
            goto done;
#endif
        Py_INCREF(s);
        items[i].obj = s;
        held = i + 1;
        items[i].data = PyUnicode_DATA(s);
        items[i].kind = PyUnicode_KIND(s);
        items[i].len = PyUnicode_GET_LENGTH(s);
        total_len += items[i].len;
    }

    if (total_len >= GIL_RELEASE_MIN) {
        Py_BEGIN_ALLOW_THREADS
        count_all(items, n, (const uint8_t *)table.buf, nclasses, (int64_t *)out.buf, *hist);
        Py_END_ALLOW_THREADS
    } else {
        count_all(items, n, (const uint8_t *)table.buf, nclasses, (int64_t *)out.buf, *hist);
    }
    result = Py_None;
    Py_INCREF(result);

done:
    for (Py_ssize_t i = 0; i < held; i++)
        Py_DECREF(items[i].obj);
    PyMem_Free(items);
    PyMem_Free(hist);
    if (out.obj != NULL)
        PyBuffer_Release(&out);
    PyBuffer_Release(&table);
    return result;
}

static PyMethodDef methods[] = {
    {"profile", profile, METH_VARARGS,
     "profile(texts, table, nclasses, out) -> None\n\n"
     "Count the code points of each str of texts per class of table into out (int64,\n"
     "len(texts) * nclasses, row-major). The GIL is released while counting."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_script_check",
    "Script profile of str objects (PEP 393 storage read directly, GIL released).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__script_check(void)
{
    PyObject *m = PyModule_Create(&moduledef);
    if (m != NULL && PyModule_AddIntConstant(m, "TABLE_SIZE", TABLE_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
