"""A small Code 128 encoder that draws SVG, for the simulator's customer payment codes.

Wallet apps in Japan show the payment code as a Code 128 barcode above a QR code; POS scanners
read either. Our sandbox codes are digits, which Code 128's set C packs two to a symbol; any other
printable ASCII text uses set B. Nothing else is needed, so no barcode library is pulled in.
"""

from __future__ import annotations

from typing import Final

# Bar and space widths (in modules) of symbols 0-106, from the Code 128 specification
# (ISO/IEC 15417, table 1). Each symbol is 11 modules wide; STOP is 13.
# fmt: off
_PATTERNS: Final = (
    "212222", "222122", "222221", "121223", "121322", "131222", "122213", "122312", "132212",
    "221213", "221312", "231212", "112232", "122132", "122231", "113222", "123122", "123221",
    "223211", "221132", "221231", "213212", "223112", "312131", "311222", "321122", "321221",
    "312212", "322112", "322211", "212123", "212321", "232121", "111323", "131123", "131321",
    "112313", "132113", "132311", "211313", "231113", "231311", "112133", "112331", "132131",
    "113123", "113321", "133121", "313121", "211331", "231131", "213113", "213311", "213131",
    "311123", "311321", "331121", "312113", "312311", "332111", "314111", "221411", "431111",
    "111224", "111422", "121124", "121421", "141122", "141221", "112214", "112412", "122114",
    "122411", "142112", "142211", "241211", "221114", "413111", "241112", "134111", "111242",
    "121142", "121241", "114212", "124112", "124211", "411212", "421112", "421211", "212141",
    "214121", "412121", "111143", "111341", "131141", "114113", "114311", "411113", "411311",
    "113141", "114131", "311141", "411131", "211412", "211214", "211232", "2331112",
)
# fmt: on

CODE_B: Final = 100  # switch to set B (as a symbol in set C)
START_B: Final = 104
START_C: Final = 105
STOP: Final = 106
QUIET_ZONE_MODULES: Final = 10
MAX_TEXT_LENGTH: Final = 80


def symbols(text: str) -> list[int]:
    """The symbol values that encode ``text``, with start, checksum and stop.

    All digits: set C from the start (a last odd digit goes in set B). Otherwise: set B. Raises
    ValueError for empty, over-long or non-printable-ASCII text.
    """
    if not text or len(text) > MAX_TEXT_LENGTH:
        raise ValueError(f"a barcode holds 1 to {MAX_TEXT_LENGTH} characters")
    if any(not 32 <= ord(char) <= 126 for char in text):
        raise ValueError("Code 128 set B holds printable ASCII only")
    if text.isdigit() and text.isascii() and len(text) >= 2:
        values = [START_C]
        even = len(text) - len(text) % 2
        values += [int(text[i : i + 2]) for i in range(0, even, 2)]
        if even < len(text):
            values += [CODE_B, ord(text[-1]) - 32]
    else:
        values = [START_B] + [ord(char) - 32 for char in text]
    # The check symbol weights the start symbol by 1 and each later symbol by its position.
    checksum = (values[0] + sum(i * v for i, v in enumerate(values[1:], start=1))) % 103
    return [*values, checksum, STOP]


def modules(text: str) -> list[bool]:
    """The barcode as modules, True for bar, quiet zones included."""
    out = [False] * QUIET_ZONE_MODULES
    for value in symbols(text):
        bar = True
        for width in _PATTERNS[value]:
            out += [bar] * int(width)
            bar = not bar
    return out + [False] * QUIET_ZONE_MODULES


def svg(text: str, *, module_px: int = 2, height_px: int = 80) -> str:
    """An SVG image of the barcode: one rectangle per bar, white background, no text."""
    bits = modules(text)
    width = len(bits) * module_px
    rects: list[str] = []
    start: int | None = None
    for index, bar in enumerate([*bits, False]):
        if bar and start is None:
            start = index
        elif not bar and start is not None:
            rects.append(
                f'<rect x="{start * module_px}" y="0" width="{(index - start) * module_px}" '
                f'height="{height_px}"/>'
            )
            start = None
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height_px}" '
        f'viewBox="0 0 {width} {height_px}" shape-rendering="crispEdges">'
        f'<rect width="{width}" height="{height_px}" fill="#fff"/>'
        f'<g fill="#000">{"".join(rects)}</g></svg>'
    )
