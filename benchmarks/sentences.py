"""English sentences without a download, and BERT's WordPiece tokenizer in plain Python (issue 25).

A sentence encoder needs sentences to calibrate on and others to measure on.
The Python standard library ships thousands of docstrings written in plain
English; the first sentence of each public function's, class's and
method's docstring, from a fixed list of modules, deduplicated and
shuffled with a seed, is a deterministic corpus (for one Python version:
docstrings change between releases). The tokenizer is BERT's uncased one
(clean, lower-case, strip accents, split on whitespace and punctuation,
greedy longest-match WordPiece with ``##`` continuations), so the
benchmark needs no ``tokenizers`` package; ``export_minilm.py`` checks it
against ``tokenizers`` on every sentence when that package is there.
"""

from __future__ import annotations

import importlib
import inspect
import random
import re
import unicodedata
from pathlib import Path

import numpy as np

MODULES = (
    "abc argparse array ast asyncio base64 bisect calendar cmd codecs collections colorsys configparser contextlib "
    "copy csv dataclasses datetime decimal difflib email enum filecmp fnmatch fractions ftplib functools gettext "
    "glob gzip hashlib heapq hmac html html.parser http.client http.cookies imaplib inspect io ipaddress itertools "
    "json locale logging lzma mailbox mimetypes numbers operator optparse os pathlib pickle pkgutil platform "
    "poplib pprint queue random re sched secrets selectors shelve shlex shutil smtplib socket sqlite3 ssl "
    "statistics string struct subprocess tarfile tempfile textwrap threading timeit tokenize trace traceback "
    "turtle types typing unittest urllib.parse urllib.request uuid warnings wave weakref xml.dom.minidom "
    "xml.etree.ElementTree zipfile zlib"
).split()

_FIRST = re.compile(r"^(.+?[.!?])(\s|$)", re.S)


def _first_sentence(doc: str) -> str | None:
    para = doc.strip().split("\n\n", 1)[0]
    m = _FIRST.match(" ".join(para.split()))
    if not m:
        return None
    s = m.group(1)
    words = s.split()
    if not 6 <= len(words) <= 40 or ">>>" in s or sum(c.isalpha() for c in s) < 0.7 * len(s):
        return None
    return s


def _docstrings(module) -> list[str]:
    docs = []
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj) or inspect.isclass(obj):
            docs.append(inspect.getdoc(obj) or "")
        if inspect.isclass(obj):
            docs.extend(inspect.getdoc(m) or "" for n, m in sorted(vars(obj).items())
                        if not n.startswith("_") and inspect.isfunction(m))
    return docs


def stdlib_sentences(seed: int = 0) -> list[str]:
    """Distinct first sentences of standard-library docstrings, in a seeded random order."""
    seen: dict[str, None] = {}
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a module missing from this build (turtle without tkinter, ...)
            continue
        for doc in _docstrings(module):
            s = _first_sentence(doc)
            if s is not None:
                seen.setdefault(s, None)
    out = sorted(seen)
    random.Random(seed).shuffle(out)
    return out


# ------------------------------------------------------------------ WordPiece

def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or \
        unicodedata.category(ch).startswith("P")


def _basic(text: str) -> list[str]:
    """BERT's basic tokenizer, uncased: clean, lower-case, strip accents, split off punctuation."""
    clean = "".join(" " if ch.isspace() else ch for ch in text
                    if ord(ch) not in (0, 0xFFFD) and not unicodedata.category(ch).startswith("C") or ch in "\t\n\r")
    words = []
    for tok in clean.lower().split():
        tok = "".join(c for c in unicodedata.normalize("NFD", tok) if unicodedata.category(c) != "Mn")
        cur = ""
        for ch in tok:
            if _is_punct(ch):
                if cur:
                    words.append(cur)
                words.append(ch)
                cur = ""
            else:
                cur += ch
        if cur:
            words.append(cur)
    return words


class WordPiece:
    """BERT's uncased WordPiece over a ``vocab.txt`` (one token a line, the line number is its id)."""

    def __init__(self, vocab_file: Path) -> None:
        self.vocab = {t: i for i, t in enumerate(Path(vocab_file).read_text(encoding="utf-8").splitlines())}
        self.unk, self.cls, self.sep = self.vocab["[UNK]"], self.vocab["[CLS]"], self.vocab["[SEP]"]

    def _pieces(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk]
            start = end
        return ids

    def encode(self, text: str) -> list[int]:
        """[CLS] pieces [SEP], as the model was trained on."""
        return [self.cls] + [i for w in _basic(text) for i in self._pieces(w)] + [self.sep]

    def batch(self, texts: list[str], length: int) -> dict[str, np.ndarray]:
        """``input_ids`` and ``attention_mask`` [N, length], int64, padded with 0 (truncated, [SEP] kept)."""
        ids = np.zeros((len(texts), length), np.int64)
        mask = np.zeros((len(texts), length), np.int64)
        for i, t in enumerate(texts):
            e = self.encode(t)
            e = e if len(e) <= length else e[:length - 1] + [self.sep]
            ids[i, :len(e)] = e
            mask[i, :len(e)] = 1
        return {"input_ids": ids, "attention_mask": mask}
