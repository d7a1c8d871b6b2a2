/* The state codec's happy path in C (hotswap/state/codec.py is the reference and says what the bytes are).
 *
 * Why: a handover encodes the state and decodes it while the guest is paused, and there the Python codec's first
 * run costs 3-10x its warm time (its bytecode and the interpreter's caches are cold on a CPU that just ran the
 * guest). This does the same work in a few compact loops.
 *
 * Both functions return NotImplemented for anything they do not handle exactly as the reference does: a subclass
 * or buffer value, an int outside [-2**63, 2**64), a BIGINT, a string that is not valid UTF-8, and every malformed
 * input. The caller then runs the Python codec, which encodes the value or raises the error that names where it
 * sits. So this module never accepts what the reference rejects and never has to word an error.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 32 /* containers with this many containers around them are rejected (codec.MAX_DEPTH) */
#define MAX_LENGTH 0xFFFFFFFFULL

enum {
    TAG_NONE = 0x01,
    TAG_FALSE = 0x02,
    TAG_TRUE = 0x03,
    TAG_UINT = 0x04,
    TAG_NEGINT = 0x05,
    TAG_BIGINT = 0x06,
    TAG_BYTES = 0x07,
    TAG_STR = 0x08,
    TAG_LIST = 0x09,
    TAG_DICT = 0x0A,
};

/* ---- encoding ------------------------------------------------------------------------------------------------ */

typedef struct {
    char *data;
    size_t length;
    size_t capacity;
} Out;

/* 0 on success; -1 with a Python error set (MemoryError) */
static int out_reserve(Out *out, size_t more) {
    if (out->length + more <= out->capacity)
        return 0;
    size_t capacity = out->capacity ? out->capacity : 16384;
    while (capacity < out->length + more)
        capacity *= 2;
    char *grown = PyMem_Realloc(out->data, capacity);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    out->data = grown;
    out->capacity = capacity;
    return 0;
}

/* a tag and its little-endian body of `width` bytes (4: a length or count, 8: an int) */
static int put_tag(Out *out, int tag, uint64_t value, int width) {
    if (out_reserve(out, 1 + (size_t)width) < 0)
        return -1;
    char *at = out->data + out->length;
    at[0] = (char)tag;
    for (int i = 0; i < width; i++)
        at[1 + i] = (char)(value >> (8 * i));
    out->length += 1 + (size_t)width;
    return 0;
}

static int put_blob(Out *out, int tag, const char *data, Py_ssize_t size) {
    if ((unsigned long long)size > MAX_LENGTH)
        return 1;
    if (put_tag(out, tag, (uint64_t)size, 4) < 0 || out_reserve(out, (size_t)size) < 0)
        return -1;
    memcpy(out->data + out->length, data, (size_t)size);
    out->length += (size_t)size;
    return 0;
}

/* a str as STR; 1 if it has no UTF-8 form (lone surrogates) */
static int put_str(Out *out, PyObject *text) {
    Py_ssize_t size;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &size);
    if (utf8 == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
            return -1;
        PyErr_Clear();
        return 1;
    }
    return put_blob(out, TAG_STR, utf8, size);
}

static int put_int(Out *out, PyObject *value) {
    int overflow;
    long long small = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (small == -1 && PyErr_Occurred())
        return -1;
    if (overflow == 0)
        return small >= 0 ? put_tag(out, TAG_UINT, (uint64_t)small, 8)
                          : put_tag(out, TAG_NEGINT, (uint64_t)(-1 - small), 8);
    if (overflow < 0)
        return 1; /* below -2**63: the reference writes NEGINT or BIGINT */
    unsigned long long big = PyLong_AsUnsignedLongLong(value);
    if (big == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        return 1; /* 2**64 or more: BIGINT */
    }
    return put_tag(out, TAG_UINT, big, 8);
}

/* 0 written, 1 not handled here (the caller falls back), -1 a Python error */
static int encode_value(Out *out, PyObject *value, int depth) {
    PyTypeObject *kind = Py_TYPE(value);
    if (kind == &PyBytes_Type)
        return put_blob(out, TAG_BYTES, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
    if (kind == &PyLong_Type)
        return put_int(out, value);
    if (kind == &PyDict_Type) {
        if (depth >= MAX_DEPTH)
            return 1;
        Py_ssize_t count = PyDict_GET_SIZE(value);
        if (put_tag(out, TAG_DICT, (uint64_t)count, 4) < 0)
            return -1;
        Py_ssize_t position = 0;
        PyObject *key, *item;
        while (PyDict_Next(value, &position, &key, &item)) {
            if (Py_TYPE(key) != &PyUnicode_Type)
                return 1;
            int rc = put_str(out, key);
            if (rc == 0)
                rc = encode_value(out, item, depth + 1);
            if (rc != 0)
                return rc;
        }
        return 0;
    }
    if (kind == &PyList_Type) {
        if (depth >= MAX_DEPTH)
            return 1;
        Py_ssize_t count = PyList_GET_SIZE(value);
        if ((unsigned long long)count > MAX_LENGTH)
            return 1;
        if (put_tag(out, TAG_LIST, (uint64_t)count, 4) < 0)
            return -1;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(value); i++) {
            int rc = encode_value(out, PyList_GET_ITEM(value, i), depth + 1);
            if (rc != 0)
                return rc;
        }
        return 0;
    }
    if (kind == &PyUnicode_Type)
        return put_str(out, value);
    if (value == Py_None || value == Py_True || value == Py_False) {
        if (out_reserve(out, 1) < 0)
            return -1;
        out->data[out->length++] = (char)(value == Py_None ? TAG_NONE : value == Py_True ? TAG_TRUE : TAG_FALSE);
        return 0;
    }
    return 1;
}

static PyObject *fast_encode(PyObject *module, PyObject *tree) {
    (void)module;
    Out out = {NULL, 0, 0};
    int rc = encode_value(&out, tree, 0);
    PyObject *result = NULL;
    if (rc == 0)
        result = PyBytes_FromStringAndSize(out.data, (Py_ssize_t)out.length);
    else if (rc > 0)
        result = Py_NewRef(Py_NotImplemented);
    PyMem_Free(out.data);
    return result;
}

/* ---- decoding ------------------------------------------------------------------------------------------------ */

typedef struct {
    const unsigned char *data;
    size_t end;
    size_t pos;
} In;

/* a little-endian unsigned int of `width` bytes */
static uint64_t get_le(const unsigned char *at, int width) {
    uint64_t value = 0;
    for (int i = width - 1; i >= 0; i--)
        value = (value << 8) | at[i];
    return value;
}

/* A length-prefixed body at in->pos (tag already checked): its start and size, or -1 if it runs past the end. */
static int take_body(In *in, const unsigned char **body, size_t *size) {
    if (in->end - in->pos < 5)
        return -1;
    uint32_t length = (uint32_t)get_le(in->data + in->pos + 1, 4);
    if (in->end - in->pos - 5 < length)
        return -1;
    *body = in->data + in->pos + 5;
    *size = length;
    in->pos += 5 + (size_t)length;
    return 0;
}

static PyObject *decode_str(In *in) {
    const unsigned char *body;
    size_t size;
    if (take_body(in, &body, &size) < 0)
        return NULL;
    PyObject *text = PyUnicode_DecodeUTF8((const char *)body, (Py_ssize_t)size, "strict");
    if (text == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
        PyErr_Clear(); /* malformed input: NULL without an error set */
    return text;
}

/* The value at in->pos, or NULL: with a Python error set (out of memory) or, for malformed or unhandled input,
 * without one. */
static PyObject *decode_value(In *in, int depth) {
    if (in->pos >= in->end)
        return NULL;
    int tag = in->data[in->pos];
    switch (tag) {
    case TAG_NONE:
        in->pos += 1;
        return Py_NewRef(Py_None);
    case TAG_TRUE:
        in->pos += 1;
        return Py_NewRef(Py_True);
    case TAG_FALSE:
        in->pos += 1;
        return Py_NewRef(Py_False);
    case TAG_UINT:
    case TAG_NEGINT: {
        if (in->end - in->pos < 9)
            return NULL;
        uint64_t magnitude = get_le(in->data + in->pos + 1, 8);
        in->pos += 9;
        if (tag == TAG_UINT)
            return PyLong_FromUnsignedLongLong(magnitude);
        if (magnitude <= (uint64_t)INT64_MAX)
            return PyLong_FromLongLong(-1 - (long long)magnitude);
        return NULL; /* below -2**63: left to the reference */
    }
    case TAG_BYTES: {
        const unsigned char *body;
        size_t size;
        if (take_body(in, &body, &size) < 0)
            return NULL;
        return PyBytes_FromStringAndSize((const char *)body, (Py_ssize_t)size);
    }
    case TAG_STR:
        return decode_str(in);
    case TAG_LIST:
    case TAG_DICT: {
        if (in->end - in->pos < 5)
            return NULL;
        uint32_t count = (uint32_t)get_le(in->data + in->pos + 1, 4);
        in->pos += 5;
        if (count > in->end - in->pos || depth >= MAX_DEPTH) /* every item takes at least one byte */
            return NULL;
        if (tag == TAG_LIST) {
            PyObject *list = PyList_New((Py_ssize_t)count);
            if (list == NULL)
                return NULL;
            for (uint32_t i = 0; i < count; i++) {
                PyObject *item = decode_value(in, depth + 1);
                if (item == NULL) {
                    Py_DECREF(list);
                    return NULL;
                }
                PyList_SET_ITEM(list, (Py_ssize_t)i, item);
            }
            return list;
        }
        PyObject *dict = PyDict_New();
        if (dict == NULL)
            return NULL;
        for (uint32_t i = 0; i < count; i++) {
            if (in->pos >= in->end || in->data[in->pos] != TAG_STR)
                goto bad_dict;
            PyObject *key = decode_str(in);
            if (key == NULL)
                goto bad_dict;
            PyObject *item = decode_value(in, depth + 1);
            if (item == NULL) {
                Py_DECREF(key);
                goto bad_dict;
            }
            Py_ssize_t before = PyDict_GET_SIZE(dict);
            int rc = PyDict_SetItem(dict, key, item);
            Py_DECREF(key);
            Py_DECREF(item);
            if (rc < 0 || PyDict_GET_SIZE(dict) == before) /* the same key twice */
                goto bad_dict;
        }
        return dict;
    bad_dict:
        Py_DECREF(dict);
        return NULL;
    }
    default: /* BIGINT (never in a tree hotswap writes) and unknown tags */
        return NULL;
    }
}

static PyObject *fast_decode(PyObject *module, PyObject *arg) {
    (void)module;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    In in = {(const unsigned char *)view.buf, (size_t)view.len, 0};
    PyObject *tree = decode_value(&in, 0);
    PyBuffer_Release(&view);
    if (tree == NULL) {
        if (PyErr_Occurred())
            return NULL;
        return Py_NewRef(Py_NotImplemented);
    }
    if (in.pos != in.end) { /* trailing bytes */
        Py_DECREF(tree);
        return Py_NewRef(Py_NotImplemented);
    }
    return tree;
}

static PyMethodDef methods[] = {
    {"encode", fast_encode, METH_O,
     "encode(tree) -> bytes, or NotImplemented where the Python codec must take over (it also words errors)"},
    {"decode", fast_decode, METH_O,
     "decode(buffer) -> tree, or NotImplemented for malformed or unhandled input (the Python codec says why)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "hotswap.state._fastcodec",
    "The state codec's happy path in C; hotswap.state.codec is the reference.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastcodec(void) { return PyModule_Create(&module); }
