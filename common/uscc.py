"""The unified social credit code (统一社会信用代码, GB 32100-2015) of a Chinese organisation.

Eighteen characters from a 31-character alphabet (the digits and the capitals without I, O, S, V, Z):

====  ==========================================================================================
pos   meaning
====  ==========================================================================================
1     registration authority (1 机构编制, 5 民政, 9 工商/市场监管, Y 其他, ...)
2     organisation category within that authority (9-1 企业, 9-2 个体工商户, 5-1 社会团体, ...)
3-8   administrative division of the registering office (GB/T 2260: six digits)
9-17  the organisation code (GB 11714; its own mod-11 check character is *not* enforced: real codes
      such as SPDB's 91310000631295002H carry organisation codes that predate or miss that check)
18    the check character: ``31 - (sum of value(c_i) * 3^(i-1) mod 31 for i = 1..17) mod 31``
====  ==========================================================================================

:func:`validate` refuses a code naming the first position that is wrong, with a stable ``code``: an
illegal character (``uscc_illegal_character``), a bad segment (``uscc_bad_segment``), a wrong length
(``uscc_length``) or a wrong check character (``check_character_mismatch``). Because the weights are powers
of 3, a primitive root modulo 31, every single-character substitution changes the weighted sum modulo 31
and is caught. Lower-case input and surrounding spaces are accepted and normalised; nothing else is.
Pure: no I/O and no other package of the project.
"""

from __future__ import annotations

from common.errors import InvalidInput

ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
"""The 31 characters of GB 32100-2015, in value order (``ALPHABET[v]`` has value ``v``)."""
LENGTH = 18
_VALUE = {ch: v for v, ch in enumerate(ALPHABET)}
_WEIGHTS = tuple(pow(3, i, 31) for i in range(LENGTH - 1))  # 1, 3, 9, 27, 19, 26, ...

# GB 32100-2015 Annex A: registration authorities and the organisation categories each may register.
CATEGORIES: dict[str, str] = {
    "1": "1239",  # 机构编制: 机关, 事业单位, 中央编办直接管理机构编制的群众团体, 其他
    "2": "19",  # 外交
    "3": "123459",  # 司法行政: 律师执业机构, 公证处, 基层法律服务所, 司法鉴定机构, 仲裁委员会, 其他
    "4": "19",  # 文化
    "5": "1239",  # 民政: 社会团体, 民办非企业单位, 基金会, 其他
    "6": "129",  # 旅游
    "7": "129",  # 宗教
    "8": "19",  # 工会
    "9": "123",  # 工商: 企业, 个体工商户, 农民专业合作社
    "A": "19",  # 中央军委改革和编制办公室
    "N": "1239",  # 农业: 组级, 村级, 乡镇级集体经济组织, 其他
    "Y": "1",  # 其他
}


class InvalidUscc(InvalidInput):
    """A unified social credit code that breaks GB 32100-2015; ``position`` is 1-based (0: the length)."""

    code = "uscc_invalid"

    def __init__(self, detail: str, *, code: str, position: int) -> None:
        super().__init__(detail, code=code)
        self.position = position


def normalise(text: str) -> str:
    """``text`` stripped of surrounding spaces and upper-cased (the form codes are stored and compared in)."""
    return text.strip().upper()


def check_character(first17: str) -> str:
    """The check character (position 18) of the first 17 characters of a code (all in :data:`ALPHABET`)."""
    total = sum(_VALUE[ch] * w for ch, w in zip(first17, _WEIGHTS, strict=True))
    return ALPHABET[(31 - total % 31) % 31]


def _refuse(code: str, position: int, what: str, value: str) -> InvalidUscc:
    return InvalidUscc(f"uscc {value!r}: {what}", code=code, position=position)


def _check_characters(value: str) -> None:
    if len(value) != LENGTH:
        raise _refuse("uscc_length", 0, f"a code has {LENGTH} characters, not {len(value)}", value)
    for position, ch in enumerate(value, start=1):
        if ch not in _VALUE:
            raise _refuse(
                "uscc_illegal_character",
                position,
                f"character {position} ({ch!r}) is not in the code's alphabet (no I, O, S, V, Z)",
                value,
            )


def _check_segments(value: str) -> None:
    authority, category = value[0], value[1]
    if authority not in CATEGORIES:
        raise _refuse(
            "uscc_bad_segment", 1, f"character 1 ({authority!r}) is no registration authority", value
        )
    if category not in CATEGORIES[authority]:
        raise _refuse(
            "uscc_bad_segment",
            2,
            f"character 2 ({category!r}) is no organisation category of authority {authority!r}",
            value,
        )
    for position in range(3, 9):
        if not value[position - 1].isdigit():
            raise _refuse(
                "uscc_bad_segment",
                position,
                f"character {position} ({value[position - 1]!r}) must be a digit (division code, positions 3-8)",
                value,
            )


def validate(text: str) -> str:
    """The normalised code, or :class:`InvalidUscc` naming the first wrong position."""
    value = normalise(text)
    _check_characters(value)
    _check_segments(value)
    expected = check_character(value[:17])
    if value[17] != expected:
        raise _refuse(
            "check_character_mismatch",
            18,
            f"check character (18) is {value[17]!r}, the first 17 characters give {expected!r}",
            value,
        )
    return value
