"""The built-in caption grammar and the user caption-file reader."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from pathlib import Path

import pytest

from perfusion_core.caption_grammar import MAX_WORDS, MIN_WORDS, corpus_digest, generate_captions
from perfusion_core.caption_vocabulary import pluralize, with_article
from perfusion_core.prompt_text import CaptionFileError, read_caption_file


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return generate_captions(20000, seed=0)


def words_of(caption: str) -> list[str]:
    return re.findall(r"[a-z0-9][a-z0-9'-]*", caption.lower())


def test_twenty_thousand_distinct(corpus: list[str]) -> None:
    assert len(corpus) == 20000
    assert len(set(corpus)) == 20000
    assert all(isinstance(c, str) and c == c.strip() and "  " not in c for c in corpus)


def test_deterministic_per_seed_and_prefix_stable(corpus: list[str]) -> None:
    assert generate_captions(500, seed=0) == corpus[:500]
    other = generate_captions(500, seed=1)
    assert other == generate_captions(500, seed=1)
    assert len(set(other) & set(corpus[:500])) < 50
    assert corpus_digest(corpus[:500]) != corpus_digest(other)
    assert corpus_digest(corpus[:500]) == corpus_digest(generate_captions(500, seed=0))
    assert generate_captions(0) == []
    with pytest.raises(ValueError):
        generate_captions(-1)


def test_lengths_vary_within_bounds(corpus: list[str]) -> None:
    lengths = [len(c.split()) for c in corpus]
    assert min(lengths) >= MIN_WORDS and max(lengths) <= MAX_WORDS
    counts = Counter(lengths)
    assert len(counts) >= 20
    assert sum(n for k, n in counts.items() if k <= 5) > 500
    assert sum(n for k, n in counts.items() if k >= 20) > 500
    assert statistics.pstdev(lengths) > 4.0


def test_word_variety_and_category_coverage(corpus: list[str]) -> None:
    counts = Counter(w for c in corpus for w in words_of(c))
    assert len(counts) > 300
    # every category of the grammar shows up
    for word in ("woman", "dog", "owl", "dolphin", "teapot", "car", "sailboat", "helicopter",
                 "train", "pizza", "lighthouse", "sunset", "watercolor", "film", "while",
                 "background", "photo"):
        assert counts[word] > 0, word
    # no single content word dominates the corpus
    content = [(w, n) for w, n in counts.most_common() if len(w) > 4]
    assert content[0][1] < 0.1 * sum(counts.values())


def test_multi_clause_and_forms_present(corpus: list[str]) -> None:
    assert sum(" while " in c for c in corpus) > 200
    assert sum(c.endswith(".") for c in corpus) > 1000
    assert sum(c.count(",") >= 2 for c in corpus) > 1000
    assert sum(c.startswith("a photo of") for c in corpus) > 200


def test_articles_agree(corpus: list[str]) -> None:
    for c in corpus:
        for art, word in re.findall(r"\b([Aa]n?) ([\w-]+)", c):
            assert with_article(word).split(" ")[0] == art.lower(), c


def test_helpers() -> None:
    assert pluralize("cup of coffee") == "cups of coffee"
    assert pluralize("fisherman") == "fishermen"
    assert pluralize("puppy") == "puppies" and pluralize("donkey") == "donkeys"
    assert pluralize("bus") == "buses" and pluralize("sheep") == "sheep"
    assert pluralize("hot air balloon") == "hot air balloons"
    assert with_article("owl") == "an owl" and with_article("uniform") == "a uniform"
    assert with_article("hour") == "an hour" and with_article("red car") == "a red car"


# ---------------------------------------------------------------- caption files
def test_read_caption_file_strips_blanks_comments_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "caps.txt"
    path.write_bytes("\ufeff# my captions\r\na dog  on a\tbeach\r\n\r\n   \n  # indented comment\n"
                     "un café à Paris\nlast line without newline".encode("utf-8"))
    assert read_caption_file(path) == ["a dog on a beach", "un café à Paris", "last line without newline"]
    assert read_caption_file(str(path)) == read_caption_file(path)


@pytest.mark.parametrize("case", ["missing", "empty", "comments_only", "directory", "binary",
                                  "utf16", "latin1"])
def test_read_caption_file_errors_name_the_file(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}_captions.txt"
    if case == "empty":
        path.write_text("")
    elif case == "comments_only":
        path.write_text("# nothing here\n\n   \n")
    elif case == "directory":
        path.mkdir()
    elif case == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    elif case == "utf16":
        path.write_text("a dog on a beach\n", encoding="utf-16")
    elif case == "latin1":
        path.write_bytes("un caf\u00e9\n".encode("latin-1"))
    with pytest.raises(CaptionFileError) as info:
        read_caption_file(path)
    assert path.name in str(info.value)
    assert isinstance(info.value, ValueError)
