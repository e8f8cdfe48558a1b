"""The text analyzer: a text -> its search terms, the same for documents (at build time) and
queries (at search time), in every script. Dependency-free beyond PyStemmer; it reads
Python's own Unicode database, so it needs no data at run time.

1. Normalize (NFKC) and casefold: full-width "ＴＳＨＩＲＴ" is "tshirt", the ligature "ﬁ"
   is "fi", "Straße" and "STRASSE" are both "strasse". Soft hyphens, zero-width joiners and
   variation selectors are dropped, digits of every script are ASCII digits ("٤٢" is "42").
2. Letters joined across hyphens and apostrophes are one word ("T-shirt" -> "tshirt", so
   "t-shirts" finds "T-shirt/top" and not "Shirt"); words are runs of letters, marks and
   digits of any script, split on anything else and where the script changes ("Tシャツ"
   is "t" and "シャツ").
3. Each word is folded as its script allows (:data:`_FOLD`): Latin and Greek words lose
   their accents ("Café" -> "cafe", "φόρεμα" -> "φορεμα", Turkish "İ" and "ı" -> "i",
   "ø" -> "o"); Cyrillic words lose stress marks only ("й" stays a letter); Arabic
   words lose harakat and tatweel; Hebrew words their points; Devanagari words the nukta.
   The marks of every other script are letters and stay (Thai tone marks, Devanagari
   vowel signs).
4. Each word is stemmed by the Snowball stemmer of its script (:data:`STEMMERS`): English
   for Latin (with English stop words dropped), Russian for Cyrillic, Greek, Hindi for
   Devanagari, Armenian, Tamil; Arabic by a light stemmer (:func:`arabic_light_stem`).
   Words of other scripts are kept whole. ("платье", "платья", "платьем" -> "плат";
   Snowball's Russian reads "ё" as "е"; Greek's wants no accents, and gets none.)
5. Scripts whose words are not set apart by spaces (Han, Hiragana, Katakana, Thai, Lao,
   Khmer, Myanmar; and Hangul, whose spaced words carry particles and compounds) are cut
   into every single character and every overlapping pair of characters ("连衣裙" ->
   "连", "衣", "裙", "连衣", "衣裙"), with no dictionary: a word of one or two characters
   inside an unspaced title is found, and a longer word ranks first the titles that hold
   all its pairs. A character is a letter with the marks that follow it (Thai "ชุ").

ASCII text is analyzed exactly as before this analyzer knew other scripts.
"""

from __future__ import annotations

import bisect
import functools
import re
import sys
import unicodedata
from typing import List, Tuple

# Snowball stemmers (PyStemmer) by script; words of scripts not named are not stemmed.
STEMMERS = {"latin": "english", "cyrillic": "russian", "greek": "greek", "devanagari": "hindi",
            "armenian": "armenian", "tamil": "tamil"}
# Scripts whose words are not set apart by spaces: cut into characters and pairs of them.
UNSPACED = frozenset({"cjk", "hangul", "thai", "lao", "khmer", "myanmar"})

# (first code point, script) for the blocks of each script the analyzer treats apart, up to
# the next entry; None: no script of its own ("other": kept whole, not stemmed).
_BLOCKS = (
    (0x0000, None), (0x0030, "latin"), (0x003A, None), (0x0041, "latin"), (0x005B, None),
    (0x0061, "latin"), (0x007B, None), (0x00AA, "latin"), (0x00AB, None), (0x00BA, "latin"),
    (0x00BB, None), (0x00C0, "latin"), (0x02B0, None), (0x0370, "greek"),
    (0x0400, "cyrillic"), (0x0530, "armenian"), (0x0590, "hebrew"), (0x0600, "arabic"),
    (0x0700, None), (0x0750, "arabic"), (0x0780, None), (0x0870, "arabic"),
    (0x0900, "devanagari"), (0x0980, None), (0x0B80, "tamil"), (0x0C00, None),
    (0x0E00, "thai"), (0x0E80, "lao"), (0x0F00, None), (0x1000, "myanmar"), (0x10A0, None),
    (0x1100, "hangul"), (0x1200, None), (0x1780, "khmer"), (0x1800, None),
    (0x19E0, "khmer"), (0x1A00, None), (0x1C80, "cyrillic"), (0x1C90, None),
    (0x1E00, "latin"), (0x1F00, "greek"), (0x2000, None), (0x2C60, "latin"),
    (0x2C80, None), (0x2DE0, "cyrillic"), (0x2E00, None), (0x2E80, "cjk"), (0x2FE0, None),
    (0x3005, "cjk"), (0x3008, None), (0x3021, "cjk"), (0x3030, None), (0x3031, "cjk"),
    (0x3036, None), (0x3038, "cjk"), (0x303D, None), (0x3040, "cjk"), (0x3130, "hangul"),
    (0x3190, None), (0x31A0, "cjk"), (0x31C0, None), (0x31F0, "cjk"), (0x3200, None),
    (0x3400, "cjk"), (0x4DC0, None), (0x4E00, "cjk"), (0xA000, None), (0xA640, "cyrillic"),
    (0xA6A0, None), (0xA720, "latin"), (0xA800, None), (0xA8E0, "devanagari"),
    (0xA900, None), (0xA960, "hangul"), (0xA980, None), (0xA9E0, "myanmar"), (0xAA00, None),
    (0xAA60, "myanmar"), (0xAA80, None), (0xAB30, "latin"), (0xAB70, None),
    (0xAC00, "hangul"), (0xD7B0, "hangul"), (0xD800, None), (0xF900, "cjk"), (0xFB00, None),
    (0xFB13, "armenian"), (0xFB1D, "hebrew"), (0xFB50, "arabic"), (0xFE00, None),
    (0xFE70, "arabic"), (0xFF00, None), (0x1B000, "cjk"), (0x1B300, None),
    (0x20000, "cjk"), (0x40000, None),
)
_BLOCK_STARTS = [start for start, _ in _BLOCKS]

# Format characters inside words that change nothing a reader sees (soft hyphen, zero-width
# joiner and non-joiner, word joiner, byte order mark, variation selectors): dropped. Not
# the zero-width space: Thai and Khmer write it between words, and it separates them here.
_INVISIBLE = "\u00ad\u200c\u200d\u2060\ufeff" + "".join(map(chr, range(0xFE00, 0xFE10)))
# Between two letters these join them into one word.
_JOINERS = "'\u2019\u02bc\u2010-"
_ASCII_WORD = re.compile(r"[a-z0-9]+")
_ASCII_JOINER = re.compile(r"(?<=[a-z0-9])['-](?=[a-z0-9])")
# Latin letters without a decomposition, as their plain letters.
_LATIN_LETTERS = str.maketrans({"æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "đ": "d", "ð": "d",
                                "þ": "th", "ı": "i", "ħ": "h", "ŧ": "t"})
_CYRILLIC_STRESS = str.maketrans(dict.fromkeys((0x0300, 0x0301)))
_ARABIC_MARKS = str.maketrans(dict.fromkeys([*range(0x064B, 0x0660), 0x0670, 0x0640]))
_HEBREW_POINTS = str.maketrans(dict.fromkeys(range(0x0591, 0x05C8)))
_NUKTA = str.maketrans({0x093C: None})


def _without_accents(word: str) -> str:
    """Every combining mark removed (Latin and Greek accents, Turkish "i̇"'s dot)."""
    return "".join(c for c in unicodedata.normalize("NFD", word)
                   if not unicodedata.combining(c))


def _latin(word: str) -> str:
    return _without_accents(word).translate(_LATIN_LETTERS)


def _cyrillic(word: str) -> str:
    """Stress marks removed; "й" and "ё" are letters and stay."""
    return unicodedata.normalize("NFC",
                                 unicodedata.normalize("NFD", word).translate(_CYRILLIC_STRESS))


# How a word of a script is folded before it is stemmed (see the module's doc); the words of
# scripts not named keep their marks.
_FOLD = {
    "latin": _latin,
    "greek": _without_accents,
    "cyrillic": _cyrillic,
    "arabic": lambda word: word.translate(_ARABIC_MARKS),
    "hebrew": lambda word: word.translate(_HEBREW_POINTS),
    "devanagari": lambda word: word.translate(_NUKTA),
}


def _ranges(codes: List[int]) -> str:
    """Code points as the inside of a regular expression's character class."""
    spans, start = [], None
    for previous, code in zip([None, *codes], codes):
        if previous is None or code != previous + 1:
            if start is not None:
                spans.append((start, previous))
            start = code
    if start is not None:
        spans.append((start, codes[-1]))
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                   for a, b in spans)


@functools.lru_cache(maxsize=1)
def _unicode_tables() -> Tuple[re.Pattern, re.Pattern, dict]:
    """(a word, a joiner between letters, the table that drops invisible characters and
    makes digits ASCII), from this Python's Unicode database (0.1 s, once)."""
    marks, table = [], dict.fromkeys(map(ord, _INVISIBLE))
    for code in range(sys.maxunicode + 1):
        category = unicodedata.category(chr(code))
        if category[0] == "M" and chr(code) not in _INVISIBLE:
            marks.append(code)
        elif category == "Nd" and code > 0x7F:
            table[code] = str(unicodedata.decimal(chr(code)))
    letter = rf"[^\W_]|[{_ranges(marks)}]"  # letters, digits, marks of any script
    word = re.compile(rf"(?:{letter})+")
    joiners = f"[{re.escape(_JOINERS)}]"  # found first, then its neighbours checked: fast
    joiner = re.compile(rf"{joiners}(?<=(?:{letter}){joiners})(?={letter})")
    return word, joiner, table


@functools.lru_cache(maxsize=None)
def _script(char: str):
    """The script of a letter or digit, or "mark" for a combining mark."""
    if unicodedata.category(char)[0] == "M":
        return "mark"
    return _BLOCKS[bisect.bisect_right(_BLOCK_STARTS, ord(char)) - 1][1] or "other"


def _script_runs(word: str):
    """-> [(script, run)]: the word cut where its script changes; a mark belongs to the
    letter before it."""
    if word.isascii():
        return [("latin", word)]
    runs = []
    for char in word:
        script = _script(char)
        if runs and (script == "mark" or script == runs[-1][0]):
            runs[-1][1].append(char)
        else:
            runs.append((script if script != "mark" else "other", [char]))
    return [(script, "".join(chars)) for script, chars in runs]


def _characters(run: str) -> List[str]:
    """A run of an unspaced script as its characters, each a letter with its marks."""
    characters = []
    for char in run:
        if characters and unicodedata.category(char)[0] == "M":
            characters[-1] += char
        else:
            characters.append(char)
    return characters


def unspaced_terms(run: str) -> List[str]:
    """Every character of the run, then every pair of neighbouring characters."""
    characters = _characters(run)
    return [*characters, *(a + b for a, b in zip(characters, characters[1:]))]


_ARABIC_PREFIXES = ("وال", "بال", "كال", "فال", "لل", "ال", "و")
_ARABIC_SUFFIXES = ("ها", "ان", "ات", "ون", "ين", "يه", "ية", "ه", "ة", "ي")
_ARABIC_LETTERS = str.maketrans({"أ": "ا", "إ": "ا", "آ": "ا", "ى": "ي", "ة": "ه"})


def arabic_light_stem(word: str) -> str:
    """Larkey's light10 stemmer (as Lucene's ArabicNormalizer + ArabicStemmer): alef forms
    made one, then one definite-article or "and" prefix and the common suffixes removed
    while two letters remain. Snowball's Arabic stemmer takes "ف" for a prefix: "فستان"
    and "الفستان" (dress, the dress) get different stems."""
    word = word.translate(_ARABIC_LETTERS)
    for prefix in _ARABIC_PREFIXES:
        if word.startswith(prefix) and len(word) >= (4 if len(prefix) == 1
                                                      else len(prefix) + 2):
            word = word[len(prefix):]
            break
    for suffix in _ARABIC_SUFFIXES:
        if word.endswith(suffix) and len(word) >= len(suffix) + 2:
            word = word[:-len(suffix)]
    return word


@functools.lru_cache(maxsize=None)
def _stemmer(script: str):
    import Stemmer

    if script == "arabic":
        return arabic_light_stem
    return Stemmer.Stemmer(STEMMERS[script]).stemWord if script in STEMMERS else None


@functools.lru_cache(maxsize=1)
def _stopwords() -> frozenset:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def _terms(script: str, run: str) -> List[str]:
    if script in UNSPACED:
        return unspaced_terms(run)
    fold = _FOLD.get(script)
    if fold is not None and not run.isascii():
        run = fold(run)
    if script == "latin" and run in _stopwords():
        return []
    stem = _stemmer(script)
    return [stem(run) if stem else run]


def _words(text: str) -> List[str]:
    """The words of a normalized, casefolded text."""
    if text.isascii():  # the same words as below, four times faster
        return _ASCII_WORD.findall(_ASCII_JOINER.sub("", text))
    word, joiner, table = _unicode_tables()
    return word.findall(joiner.sub("", text.translate(table)))


def analyze(text: str) -> List[str]:
    """The terms of a text, as documents and queries are indexed (see the module's doc)."""
    terms = []
    for word in _words(unicodedata.normalize("NFKC", text or "").casefold()):
        if word.isascii():
            terms.extend(_terms("latin", word))
        else:
            for script, run in _script_runs(word):
                terms.extend(_terms(script, run))
    return terms
