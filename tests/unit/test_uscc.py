"""The GB 32100-2015 validator against real published codes and every single-character corruption of them."""

from __future__ import annotations

import pytest

from common.uscc import ALPHABET, InvalidUscc, check_character, validate

# Real codes, published by the companies in their registration records (public facts; not produced by this
# validator). Each appears identically in several independent public data sets, e.g. registry-API sample
# responses (Qichacha/Tianyancha-style ``creditCode`` fields) and listed-company F10 records:
REAL_CODES = {
    # 华为技术有限公司 (Huawei Technologies Co., Ltd.), Shenzhen: its business licence.
    "914403001922038216": "华为技术有限公司",
    # 北京百度网讯科技有限公司: registry-API record with property3 "Beijing Baidu Netcom Science and
    # Technology Co.,Ltd.", orgNumber 802100433.
    "91110000802100433B": "北京百度网讯科技有限公司",
    # 中航重机股份有限公司 (AVIC Heavy Machinery, SSE 600765): registry record, regNumber 520000000005018.
    "91520000214434146R": "中航重机股份有限公司",
    # 中国工商银行股份有限公司 (ICBC, SSE 601398): listed-company record REG_NUM.
    "91100000100003962T": "中国工商银行股份有限公司",
    # 阿里巴巴（中国）网络技术有限公司, Hangzhou: registry records.
    "91330100716105852F": "阿里巴巴（中国）网络技术有限公司",
    # 上海浦东发展银行股份有限公司 (SPDB, SSE 600000).
    "91310000631295002H": "上海浦东发展银行股份有限公司",
    # 深圳市腾讯计算机系统有限公司 (Tencent's operating company in Shenzhen): registry records.
    "91440300708461136T": "深圳市腾讯计算机系统有限公司",
}

_EVERY_CHARACTER = sorted(set(ALPHABET) | set("IOSVZ") | set("abc-*中"))


@pytest.mark.parametrize("code", sorted(REAL_CODES))
def test_real_codes_are_valid(code: str) -> None:
    assert validate(code) == code
    assert validate(f"  {code.lower()} ") == code  # normalised


@pytest.mark.parametrize("code", sorted(REAL_CODES))
def test_every_single_character_corruption_fails(code: str) -> None:
    refused = 0
    for position in range(len(code)):
        for ch in _EVERY_CHARACTER:
            if ch == code[position] or ch.upper() == code[position]:
                continue
            corrupted = code[:position] + ch + code[position + 1 :]
            with pytest.raises(InvalidUscc) as info:
                validate(corrupted)
            assert 1 <= info.value.position <= 18
            # named where it is wrong, or (a legal character in a legal segment) by the check character
            assert info.value.position in (position + 1, 18)
            refused += 1
    assert refused > 18 * 30


def test_wrong_check_character_is_check_character_mismatch() -> None:
    code = "914403001922038216"
    with pytest.raises(InvalidUscc) as info:
        validate(code[:17] + "7")
    assert info.value.code == "check_character_mismatch"
    assert info.value.position == 18


@pytest.mark.parametrize("letter", list("IOSVZ"))
def test_letters_outside_the_alphabet_name_their_position(letter: str) -> None:
    code = "91110000802100433B"
    with pytest.raises(InvalidUscc) as info:
        validate(code[:12] + letter + code[13:])
    assert info.value.code == "uscc_illegal_character"
    assert info.value.position == 13
    assert "character 13" in info.value.detail


def test_bad_segments_name_their_position() -> None:
    base = "914403001922038216"
    cases = {
        "B" + base[1:]: 1,  # no authority B
        "97" + base[2:]: 2,  # authority 9 has no category 7
        base[:4] + "A" + base[5:]: 5,  # division code is digits
    }
    for code, position in cases.items():
        with pytest.raises(InvalidUscc) as info:
            validate(code[:17] + check_character(code[:17]))  # a right check character: the segment fails
        assert info.value.code == "uscc_bad_segment"
        assert info.value.position == position


def test_length() -> None:
    with pytest.raises(InvalidUscc) as info:
        validate("91440300192203821")
    assert info.value.code == "uscc_length"
