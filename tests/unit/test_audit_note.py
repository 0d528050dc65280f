"""C2SP signed notes, checkpoints and cosignatures: the Go reference vector byte for byte, and refusals."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import note

# The example of golang.org/x/mod/sumdb/note (its note_test.go): key, text and published signature line.
VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
SIG = "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
PETER = Ed25519PrivateKey.from_private_bytes(SEED)


def test_the_reference_note_is_reproduced_and_verifies() -> None:
    line = note.sign_text(TEXT, "PeterNeumann", PETER)
    assert line.render() == SIG
    assert note.key_id("PeterNeumann", PETER.public_key()).hex() == "c74f20a3"
    assert note.vkey("PeterNeumann", PETER.public_key()) == VKEY
    name, public, kind = note.parse_vkey(VKEY)
    assert (name, kind) == ("PeterNeumann", note.SIG_ED25519)
    signed = note.parse_note(TEXT + "\n" + SIG)
    assert signed.text == TEXT and signed.render() == TEXT + "\n" + SIG
    assert note.verify_line(TEXT, signed.signatures[0], "PeterNeumann", public)
    assert not note.verify_line(
        TEXT.replace("cryptography", "cryptographY"), signed.signatures[0], name, public
    )
    assert not note.verify_line(TEXT, signed.signatures[0], "PaulNeumann", public)


def test_a_cosignature_is_timestamped_and_bound_to_its_text() -> None:
    witness = Ed25519PrivateKey.generate()
    head = note.TreeHead("example.com/log", 7, b"\x01" * 32, 1_764_000_000_000)
    text = head.text()
    assert note.parse_tree_head(text) == head
    line = note.cosign(text, "witness.example", witness, 1_679_315_147)
    assert line.key_id == note.key_id("witness.example", witness.public_key(), note.SIG_COSIGNATURE_V1)
    assert line.signature[:8] == (1_679_315_147).to_bytes(8, "big")
    parsed = note.parse_signature_line(line.render().rstrip("\n"))
    assert note.verify_cosignature(text, parsed, "witness.example", witness.public_key()) == 1_679_315_147
    other = note.TreeHead("example.com/log", 8, b"\x01" * 32, 1_764_000_000_000).text()
    assert note.verify_cosignature(other, parsed, "witness.example", witness.public_key()) is None
    # a cosignature is not a log signature (different key ID and message), nor the reverse
    assert not note.verify_line(text, parsed, "witness.example", witness.public_key())
    log_line = note.sign_text(text, "witness.example", witness)
    assert note.verify_cosignature(text, log_line, "witness.example", witness.public_key()) is None
    assert note.cosignature_message(text, 5).startswith(b"cosignature/v1\ntime 5\nexample.com/log\n7\n")


@pytest.mark.parametrize(
    "bad",
    [
        "no signatures\n",
        TEXT + "\n",
        TEXT + "\n" + SIG.rstrip("\n"),
        TEXT + "\n" + "- PeterNeumann abc=\n",
        TEXT + "\n" + "\u2014 Peter Neumann x08go/ZJ\n",
        TEXT + "\n" + "\u2014 PeterNeumann !!!\n",
        "tab\there\n\n" + SIG,
    ],
)
def test_malformed_notes_are_refused(bad: str) -> None:
    with pytest.raises(note.NoteError):
        note.parse_note(bad)


@pytest.mark.parametrize(
    "text",
    [
        "origin\n01\nAAAA\ntime 1\n",
        "origin\n1\n" + base64.b64encode(b"x" * 31).decode() + "\ntime 1\n",
        "origin\n1\n" + base64.b64encode(b"x" * 32).decode() + "\n",
        "origin\n1\n" + base64.b64encode(b"x" * 32).decode() + "\nwhen 1\n",
        "\n1\n" + base64.b64encode(b"x" * 32).decode() + "\ntime 1\n",
    ],
)
def test_malformed_checkpoint_texts_are_refused(text: str) -> None:
    with pytest.raises(note.NoteError):
        note.parse_tree_head(text)


def test_verifier_keys_are_checked() -> None:
    for bad in (
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "x+y",
        "a+00000000+AQ==",
    ):
        with pytest.raises(note.NoteError):
            note.parse_vkey(bad)
