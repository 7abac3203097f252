"""The pixel count an encoded image claims, read from its header inside a TensorFlow graph, before it is decoded.

The bytes signature of an export (trainer/export.py) calls `check_pixel_limit` on each image so that a
decompression bomb (a small file whose header claims 30000x30000) fails with a clear error instead of
`tf.io.decode_image` allocating for it, as `imaging.decode_image` refuses it on the Pillow path. Only graph ops:
the check is saved with the model and runs wherever the SavedModel is served.

What is read, per format (the size TensorFlow's decoder will allocate for):
- JPEG: `tf.image.extract_jpeg_shape` (libjpeg reads the header only).
- PNG: width and height in the IHDR chunk.
- BMP: width and height in the DIB header (the 12-byte core header's 16-bit fields, or the signed 32-bit ones).
- WebP: the VP8 / VP8L frame header, or the VP8X canvas.
- GIF: the logical screen and every frame's extent, walking the file's blocks: TensorFlow sizes its canvas by the
  largest frame, not by the screen, and giflib allocates every frame, so the count is the largest of the screen,
  the widest x tallest frame, and the sum of all frame areas.
Anything else (JPEG XL, which tf.io.decode_image also reads, TIFF, text, ...) is refused: a header that was not
checked is not decoded.
"""

UNKNOWN_FORMAT = -1
UNREADABLE_HEADER = -2
_PADDING = 32  # zero bytes after the data, so header fields read past the end of a truncated file are 0
_GIF_MAX_BLOCKS = 1_000_000  # sub-blocks of at most 255 bytes: about 255 MB of GIF, far above any photo


def _int(value):
    import tensorflow as tf

    return tf.constant(value, tf.int64)


def _reader(data):
    """(n, read, starts): read(start, count, big_endian=False) is the unsigned int64 of count bytes at start;
    starts(prefix, offset=0) whether those bytes are prefix. Reads past the end see zeros, never fail."""
    import tensorflow as tf

    raw = tf.io.decode_raw(data, tf.uint8)
    n = tf.cast(tf.size(raw), tf.int64)
    padded = tf.cast(tf.concat([raw, tf.zeros([_PADDING], tf.uint8)], 0), tf.int64)

    def bytes_at(start, count):
        index = tf.clip_by_value(tf.cast(start, tf.int64) + tf.range(count, dtype=tf.int64), 0, n + _PADDING - 1)
        return tf.gather(padded, index)

    def read(start, count, big_endian=False):
        shifts = tf.range(count, dtype=tf.int64) * 8
        if big_endian:
            shifts = tf.reverse(shifts, [0])
        return tf.reduce_sum(tf.bitwise.left_shift(bytes_at(start, count), shifts))

    def starts(prefix: bytes, offset: int = 0):
        fits = n >= offset + len(prefix)
        return tf.logical_and(fits, tf.reduce_all(tf.equal(bytes_at(offset, len(prefix)), list(prefix))))

    return n, read, starts


def _gif_pixels(read, n):
    import tensorflow as tf

    screen = read(6, 2) * read(8, 2)
    flags = read(10, 1)
    palette = tf.where(flags >= 128, 3 * tf.bitwise.left_shift(_int(2), flags % 8), _int(0))
    # what the byte at `position` starts: a record, a data sub-block, or nothing more to read
    top, blocks, done = _int(0), _int(1), _int(2)

    def body(position, state, widest, tallest, total, steps):
        byte = read(position, 1)
        # Data sub-blocks: a size byte, then that many bytes; size 0 ends the chain.
        sub_next = position + 1 + byte
        sub_state = tf.where(byte == 0, top, blocks)
        # Image descriptor (0x2C): left, top, width, height (16-bit), flags; then an optional local palette and the
        # LZW minimum code size byte before its data sub-blocks.
        width, height, frame_flags = read(position + 5, 2), read(position + 7, 2), read(position + 9, 1)
        local = tf.where(frame_flags >= 128, 3 * tf.bitwise.left_shift(_int(2), frame_flags % 8), _int(0))
        is_frame = tf.logical_and(tf.equal(state, top), tf.equal(byte, 0x2C))
        is_extension = tf.logical_and(tf.equal(state, top), tf.equal(byte, 0x21))  # introducer, label, sub-blocks
        next_position = tf.where(tf.equal(state, blocks), sub_next,
                                 tf.where(is_frame, position + 11 + local, position + 2))
        next_state = tf.where(tf.equal(state, blocks), sub_state,
                              tf.where(tf.logical_or(is_frame, is_extension), blocks, done))  # 0x3B or junk: stop
        return (next_position, next_state,
                tf.where(is_frame, tf.maximum(widest, width), widest),
                tf.where(is_frame, tf.maximum(tallest, height), tallest),
                tf.where(is_frame, total + width * height, total), steps + 1)

    def more(position, state, widest, tallest, total, steps):
        return tf.logical_and(tf.logical_and(position < n, tf.not_equal(state, done)), steps < _GIF_MAX_BLOCKS)

    zero = _int(0)
    position, state, widest, tallest, total, steps = tf.while_loop(
        more, body, (13 + palette, top, zero, zero, zero, zero))
    pixels = tf.reduce_max(tf.stack([screen, widest * tallest, total]))
    return tf.where(steps >= _GIF_MAX_BLOCKS, _int(UNREADABLE_HEADER), pixels)


def claimed_pixels(data):
    """int64 scalar: the pixels a scalar tf.string image claims (see the module docstring), UNKNOWN_FORMAT for a
    format other than JPEG, PNG, GIF, BMP and WebP, UNREADABLE_HEADER for a header that cannot be read."""
    import tensorflow as tf

    n, read, starts = _reader(data)

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
        return shape[0] * shape[1]

    def png():
        pixels = read(16, 4, big_endian=True) * read(20, 4, big_endian=True)
        return tf.where(starts(b"IHDR", 12), pixels, _int(UNREADABLE_HEADER))

    def bmp():
        def signed(value):
            return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

        core = read(18, 2) * read(20, 2)
        info = signed(read(18, 4)) * signed(read(22, 4))
        return tf.where(tf.equal(read(14, 4), 12), core, info)

    def webp():
        lossy = tf.bitwise.bitwise_and(read(26, 2), 0x3FFF) * tf.bitwise.bitwise_and(read(28, 2), 0x3FFF)
        bits = read(21, 4)
        lossless = ((tf.bitwise.bitwise_and(bits, 0x3FFF) + 1)
                    * (tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 14), 0x3FFF) + 1))
        extended = (read(24, 3) + 1) * (read(27, 3) + 1)
        return tf.where(starts(b"VP8 ", 12), lossy,
                        tf.where(starts(b"VP8L", 12), lossless,
                                 tf.where(starts(b"VP8X", 12), extended, _int(UNREADABLE_HEADER))))

    def gif():
        return _gif_pixels(read, n)

    def unknown():
        return _int(UNKNOWN_FORMAT)

    kinds = [(starts(b"\xff\xd8\xff"), jpeg), (starts(b"\x89PNG\r\n\x1a\n"), png),
             (tf.logical_or(starts(b"GIF87a"), starts(b"GIF89a")), gif), (starts(b"BM"), bmp),
             (tf.logical_and(starts(b"RIFF"), starts(b"WEBP", 8)), webp)]
    index = tf.constant(len(kinds), tf.int32)
    for position in reversed(range(len(kinds))):  # the first match wins
        index = tf.where(kinds[position][0], tf.constant(position, tf.int32), index)
    return tf.switch_case(index, [branch for _, branch in kinds] + [unknown])


def check_pixel_limit(data, max_pixels: int):
    """data (a scalar tf.string image), passed on only after its header was read and its pixel count is at most
    max_pixels; otherwise the graph fails with InvalidArgumentError saying why."""
    import tensorflow as tf

    pixels = claimed_pixels(data)
    checks = [
        tf.debugging.assert_none_equal(
            pixels, _int(UNKNOWN_FORMAT),
            message="image refused: not a JPEG, PNG, GIF, BMP or WebP file (the formats whose header this model "
                    "checks before decoding)"),
        tf.debugging.assert_none_equal(
            pixels, _int(UNREADABLE_HEADER),
            message="image refused: its header cannot be read (truncated or malformed file)"),
        tf.debugging.assert_less_equal(
            pixels, _int(max_pixels),
            message=f"image refused: its header claims more pixels than this model decodes ({max_pixels}); "
                    f"a decompression bomb, or a photo to downscale before sending"),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(data)
