"""The scene task, vectorised: the same samples as dev.calibquant.model.TaskGenerator (Java), bit for bit.

Sample i of seed s: SplitMix64 stream whose state starts at the i-th output of SplitMix64(s); every sample takes
exactly DRAWS draws (see TaskGenerator's class comment for the schedule). All arithmetic is integer; images are drawn
with integer tests only, so NumPy, PyTorch and Java make the same bytes. Works with numpy for generation and with
numpy or torch (the `xp` argument) for drawing.
"""
import numpy as np

DRAWS = 32
MAX_OBJECTS = 5
TRAIN_SEED = 1
TEST_SEED = 2502
IMAGE_SIZE = 64
MAX_QUESTION = 8
MAX_ANSWER = 16

WORDS = [
    "<pad>", "<bos>", "<eos>", "<system>", "<user>", "<assistant>", "<img>", "</img>", "<image>",
    "answer", "the", "question", "about", "image", ".", "what", "is", "at", "row", "column", "where", "how",
    "many", "shapes", "in", "and", "nothing", "?",
    "0", "1", "2", "3", "4", "5",
    "red", "green", "blue", "yellow", "purple", "cyan",
    "circle", "square", "triangle",
    "circles", "squares", "triangles",
    "small", "large",
]
ID = {w: i for i, w in enumerate(WORDS)}
PAD, BOS, EOS, ASSISTANT, IMAGE, IMG_END = ID["<pad>"], ID["<bos>"], ID["<eos>"], ID["<assistant>"], ID["<image>"], ID["</img>"]
DIGIT_0, COLOR_0, SHAPE_0, PLURAL_0, SIZE_0 = ID["0"], ID["red"], ID["circle"], ID["circles"], ID["small"]
PREFIX = [ID[w] for w in "<bos> <system> answer the question about the image . <user> <img>".split()]
QUESTION_TYPES = ["what_at", "where", "count_color", "count_shape", "list_row"]

BACKGROUND = [20, 20, 20]
PALETTE = [[220, 50, 47], [60, 180, 75], [50, 100, 230], [240, 220, 50], [150, 70, 200], [70, 210, 220]]
RADIUS = [3, 6]

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def draws(seed, start, count):
    """[count, DRAWS] uint64: every draw of samples start .. start+count-1."""
    with np.errstate(over="ignore"):
        idx = np.arange(start, start + count, dtype=np.uint64)
        state = _mix(np.uint64(seed % (1 << 64)) + (idx + np.uint64(1)) * _GAMMA)
        k = np.arange(1, DRAWS + 1, dtype=np.uint64)
        return _mix(state[:, None] + k[None, :] * _GAMMA)


def below(d, n):
    """Numbers in [0, n) from the top 32 bits of draws d (multiply-shift); n an int or an array like d."""
    n = np.asarray(n).astype(np.uint64)
    return (((d >> np.uint64(32)) * n) >> np.uint64(32)).astype(np.int64)


def _partial_shuffle(size, d, first):
    rows = np.arange(d.shape[0])
    items = np.tile(np.arange(size, dtype=np.int64), (d.shape[0], 1))
    for j in range(MAX_OBJECTS):
        r = j + below(d[:, first + j], size - j)
        a = items[rows, j].copy()
        items[rows, j] = items[rows, r]
        items[rows, r] = a
    return items[:, :MAX_OBJECTS]


def generate(seed, start, count):
    """Scenes, questions and answers of samples start .. start+count-1, as a dict of numpy int64 arrays:
    n [N]; cell, color, shape, size, jx, jy [N, 5] (slots >= n unused); qtype [N];
    question [N, MAX_QUESTION], qlen [N]; answer [N, MAX_ANSWER] (ends with <eos>), alen [N]."""
    d = draws(seed, start, count)
    N = count
    rows = np.arange(N)
    n = 1 + below(d[:, 0], MAX_OBJECTS)
    cell = _partial_shuffle(16, d, 1)
    look = _partial_shuffle(18, d, 6)
    color, shape = look // 3, look % 3
    size = np.stack([below(d[:, 11 + j], 2) for j in range(MAX_OBJECTS)], axis=1)
    jx = np.stack([below(d[:, 16 + j], 3) - 1 for j in range(MAX_OBJECTS)], axis=1)
    jy = np.stack([below(d[:, 21 + j], 3) - 1 for j in range(MAX_OBJECTS)], axis=1)
    valid = np.arange(MAX_OBJECTS)[None, :] < n[:, None]

    qtype = below(d[:, 26], 5)
    present = below(d[:, 27], 2) == 0
    t = below(d[:, 28], n)
    q_cell = np.where(present, cell[rows, t], below(d[:, 29], 16))
    q_color = np.where(present, color[rows, t], below(d[:, 30], 6))
    q_shape = np.where(present, shape[rows, t], below(d[:, 31], 3))

    grid = np.full((N, 16), -1, dtype=np.int64)  # slot in each cell, -1 when empty
    for j in range(MAX_OBJECTS):
        m = valid[:, j]
        grid[rows[m], cell[m, j]] = j

    question = np.full((N, MAX_QUESTION), PAD, dtype=np.int64)
    answer = np.full((N, MAX_ANSWER), PAD, dtype=np.int64)
    qlen = np.zeros(N, dtype=np.int64)
    alen = np.zeros(N, dtype=np.int64)

    def put(array, lengths, mask, columns):
        """Writes columns (each a token id or an [N] array) into array[mask], left-aligned; sets lengths[mask]."""
        for i, c in enumerate(columns):
            array[mask, i] = c[mask] if isinstance(c, np.ndarray) else c
        lengths[mask] = len(columns)

    def w(word):
        return ID[word]

    def describe(slot, rows_):
        return [SIZE_0 + size[rows_, slot], COLOR_0 + color[rows_, slot], SHAPE_0 + shape[rows_, slot]]

    # what is at row R column C ?
    m = qtype == 0
    put(question, qlen, m, [w("what"), w("is"), w("at"), w("row"), DIGIT_0 + q_cell // 4, w("column"),
                            DIGIT_0 + q_cell % 4, w("?")])
    there = grid[rows, q_cell]
    full = m & (there >= 0)
    put(answer, alen, full, describe(np.maximum(there, 0), rows))
    put(answer, alen, m & (there < 0), [w("nothing")])
    # where is the COLOR SHAPE ?
    m = qtype == 1
    put(question, qlen, m, [w("where"), w("is"), w("the"), COLOR_0 + color[rows, t], SHAPE_0 + shape[rows, t],
                            w("?")])
    put(answer, alen, m, [w("row"), DIGIT_0 + cell[rows, t] // 4, w("column"), DIGIT_0 + cell[rows, t] % 4])
    # how many COLOR shapes ?
    m = qtype == 2
    put(question, qlen, m, [w("how"), w("many"), COLOR_0 + q_color, w("shapes"), w("?")])
    put(answer, alen, m, [DIGIT_0 + ((color == q_color[:, None]) & valid).sum(axis=1)])
    # how many SHAPEs ?
    m = qtype == 3
    put(question, qlen, m, [w("how"), w("many"), PLURAL_0 + q_shape, w("?")])
    put(answer, alen, m, [DIGIT_0 + ((shape == q_shape[:, None]) & valid).sum(axis=1)])
    # what is in row R ?  -> objects left to right joined by "and", or "nothing"
    m = qtype == 4
    row = q_cell // 4
    put(question, qlen, m, [w("what"), w("is"), w("in"), w("row"), DIGIT_0 + row, w("?")])
    p = np.zeros(N, dtype=np.int64)
    for column in range(4):
        slot = grid[rows, row * 4 + column]
        has = m & (slot >= 0)
        joins = has & (p > 0)
        answer[rows[joins], p[joins]] = w("and")
        p += joins
        for token in describe(np.maximum(slot, 0), rows):
            answer[rows[has], p[has]] = token[has]
            p += has
    empty = m & (p == 0)
    answer[empty, 0] = w("nothing")
    p[empty] = 1
    alen[m] = p[m]

    answer[rows, alen] = EOS
    alen += 1
    return dict(n=n, cell=cell, color=color, shape=shape, size=size, jx=jx, jy=jy, valid=valid, qtype=qtype,
                question=question, qlen=qlen, answer=answer, alen=alen)


def render(s, xp, device=None):
    """[N, 64, 64, 3] uint8 images of the scenes in s (arrays of module xp: numpy, or torch on `device`)."""
    def arr(a):
        return xp.asarray(a) if device is None else xp.as_tensor(a, device=device)
    cell, size, shape, color = arr(s["cell"]), arr(s["size"]), arr(s["shape"]), arr(s["color"])
    jx, jy, valid = arr(s["jx"]), arr(s["jy"]), arr(s["valid"])
    N = cell.shape[0]
    coords = arr(np.arange(IMAGE_SIZE, dtype=np.int64))
    cx = (16 * (cell % 4) + 8 + jx)[:, :, None, None]
    cy = (16 * (cell // 4) + 8 + jy)[:, :, None, None]
    dx = coords[None, None, None, :] - cx
    dy = coords[None, None, :, None] - cy
    r = (3 + 3 * size)[:, :, None, None]  # RADIUS = [3, 6]
    circle = dx * dx + dy * dy <= r * r + r
    square = (abs(dx) <= r) & (abs(dy) <= r)
    triangle = (dy >= -r) & (dy <= r) & (2 * abs(dx) <= dy + r)
    sh = shape[:, :, None, None]
    mask = xp.where(sh == 0, circle, xp.where(sh == 1, square, triangle)) & valid[:, :, None, None]
    palette = arr(np.array(PALETTE, dtype=np.int64))
    image = arr(np.array(BACKGROUND, dtype=np.int64))[None, None, None, :] + 0 * mask[:, 0, :, :, None]
    for j in range(MAX_OBJECTS):
        rgb = palette[color[:, j]][:, None, None, :]
        image = xp.where(mask[:, j, :, :, None], rgb, image)
    return image.astype(np.uint8) if device is None else image.to(xp.uint8)


def prompt_tokens(question_row, qlen, visual_tokens):
    """The chat template around one question (see PromptFormat.java)."""
    return PREFIX + [IMAGE] * visual_tokens + [IMG_END] + list(question_row[:qlen]) + [ASSISTANT]


def digest(seed, count):
    """FNV-1a 64 over samples 0..count-1, as TaskGenerator.digest (Java) computes it."""
    s = generate(seed, 0, count)
    images = render(s, np)
    h = 0xCBF29CE484222325
    mask = (1 << 64) - 1

    def fnv(h, octets):
        for o in octets:
            h = ((h ^ int(o)) * 0x100000001B3) & mask
        return h
    for i in range(count):
        h = fnv(h, images[i].reshape(-1).tolist())
        h = fnv(h, s["question"][i, :s["qlen"][i]].tolist() + [255])
        h = fnv(h, s["answer"][i, :s["alen"][i]].tolist() + [255])
    return h - (1 << 64) if h >= (1 << 63) else h  # as a Java long


def text(tokens):
    return " ".join(WORDS[t] for t in tokens)
