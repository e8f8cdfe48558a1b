"""The text analyzer in every script (issue 27): what a title and a query become, and titles
found through a real text index by the words shoppers type."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pyarrow as pa
import pytest

from benchmarks.multilingual_titles import titles
from benchmarks.text_multilingual import old_analyze
from catalog_index.analyzer import analyze, arabic_light_stem
from catalog_index.text_index import TextIndex, build_text_index


def found_in(query: str, title: str) -> bool:
    """The query has terms, and every one is a term of the title."""
    terms = set(analyze(query))
    return bool(terms) and terms <= set(analyze(title))


@pytest.mark.parametrize("forms", [
    ("платье", "Платья", "платьем", "ПЛАТЬЕВ"),  # dress: nominative, plural, instrumental
    ("сумка", "сумки", "сумку", "сумкой"),  # bag
    ("футболка", "футболки", "футболку"),  # T-shirt
    ("чёрный", "черный", "Чёрные"),  # "ё" is typed as "е" as often as not
])
def test_russian_inflected_forms_have_one_term(forms):
    terms = {tuple(analyze(form)) for form in forms}
    assert len(terms) == 1 and all(term for term in terms), terms


def test_cyrillic_letters_with_marks_stay_letters():
    assert analyze("майка") != analyze("маика")  # "й" is a letter, not "и" with an accent
    assert analyze("пла́тье") == analyze("платье")  # a stress mark is an accent
    assert analyze("Платье") == ["плат"]


@pytest.mark.parametrize("forms", [
    ("Φόρεμα", "φορεμα", "ΦΟΡΕΜΑ", "φορέματα", "φορεματα"),  # dress, with and without tonos
    ("τσάντα", "τσάντες", "ΤΣΑΝΤΕΣ", "τσαντες"),  # bag: final sigma casefolds to σ
    ("παντελόνι", "παντελόνια", "παντελονια"),  # trousers
])
def test_greek_with_and_without_tonos_has_one_term(forms):
    terms = {tuple(analyze(form)) for form in forms}
    assert len(terms) == 1 and all(term for term in terms), terms


@pytest.mark.parametrize("query, title", [
    ("连衣裙", "2024夏季新款女士修身连衣裙黑色"),  # dress
    ("衬衫", "清仓长袖衬衫男士韩版夏季"),  # shirt
    ("包", "复古帆布单肩包男 黑色"),  # bag: one character
    ("T恤", "宽松纯棉短袖T恤男 白色"),  # T-shirt: Latin then Han
    ("ワンピース", "レディース夏用花柄ワンピース"),  # dress, in katakana
    ("花柄", "レディース夏用花柄ワンピース"),  # floral, in kanji
    ("かばん", "通勤用かばん 黒"),  # bag, in hiragana
    ("원피스", "여성 여름 롱원피스 블랙"),  # Korean dress inside a compound
    ("เสื้อยืด", "เสื้อยืดผู้หญิงคอกลมสีดำ"),  # Thai T-shirt, no spaces
    ("สีดำ", "เสื้อยืดผู้หญิงคอกลมสีดำ"),  # black
])
def test_a_word_inside_an_unspaced_title_is_found(query, title):
    assert found_in(query, title), (analyze(query), analyze(title))


def test_unspaced_scripts_are_cut_into_characters_and_pairs():
    assert analyze("连衣裙") == ["连", "衣", "裙", "连衣", "衣裙"]
    assert analyze("包") == ["包"]
    # a Thai character is a letter with its vowel and tone marks
    assert analyze("ชุด") == ["ชุ", "ด", "ชุด"]


def test_marks_that_are_letters_are_kept():
    assert analyze("เสื้อ") != analyze("เสือ")  # Thai: shirt / tiger, a tone mark apart
    assert analyze("कमीज") != analyze("कमज")  # Devanagari vowel sign ी
    assert analyze("कमीज़") == analyze("कमीजें") == analyze("कमीज")  # nukta folded, plural


@pytest.mark.parametrize("forms", [
    ("فستان", "الفستان", "فُسْتَان", "والفستان", "فستـــان"),  # dress: article, harakat, tatweel
    ("حقيبة", "الحقيبة", "حقيبه"),  # bag, and the spelling with ه
    ("تيشيرت", "تيشيرتات", "التيشيرت"),  # T-shirt, sound plural
])
def test_arabic_prefixes_suffixes_and_marks_have_one_term(forms):
    terms = {tuple(analyze(form)) for form in forms}
    assert len(terms) == 1 and all(term for term in terms), terms


def test_the_arabic_light_stemmer_keeps_two_letters():
    assert arabic_light_stem("فستان") == "فست"
    assert arabic_light_stem("وان") == "وان"  # too short to lose its "و" or "ان"


def test_full_width_latin_and_ligatures_are_plain_letters():
    assert analyze("ＴＳＨＩＲＴ") == ["tshirt"]
    assert analyze("Ｔ－ｓｈｉｒｔｓ") == analyze("t-shirts") == ["tshirt"]
    assert analyze("ﬁtted") == analyze("fitted")
    assert analyze("ﾜﾝﾋﾟｰｽ") == analyze("ワンピース") != []  # half-width katakana


@pytest.mark.parametrize("a, b", [
    ("KIRMIZI ELBİSE", "kırmızı elbise"),  # Turkish dotless ı and dotted İ
    ("İstanbul", "istanbul"),
    ("Straße", "STRASSE"),  # German ß casefolds to ss
    ("Größe", "GRÖSSE"),
    ("Crème brûlée", "creme brulee"),
    ("Strømpe", "strompe"),  # Latin letters without a decomposition
])
def test_latin_casefolds_and_loses_accents(a, b):
    assert analyze(a) == analyze(b) and analyze(a)


def test_mixed_scripts_are_cut_where_the_script_changes():
    assert analyze("Платье dress") == ["плат", "dress"]
    assert analyze("Платья dresses") == analyze("платье DRESS")
    assert analyze("Tシャツ") == ["t", "シ", "ャ", "ツ", "シャ", "ャツ"]
    assert analyze("платье42") == ["плат", "42"]


def test_digits_of_every_script_and_invisible_characters():
    assert analyze("٤٢ ४२ ๔๒") == ["42", "42", "42"]
    assert analyze("Pull\u00adover") == analyze("pullover")  # a soft hyphen
    assert analyze("T\u2010shirt") == ["tshirt"]  # the Unicode hyphen joins as "-" does


def test_english_is_analyzed_as_before():
    assert analyze("T-shirt/top") == ["tshirt", "top"]
    assert analyze("t-shirts") == ["tshirt"]
    assert analyze("Trousers") == ["trouser"]
    assert analyze("the shirt") == ["shirt"]
    for title, _ in titles("English"):
        assert analyze(title) == old_analyze(title), title


def _ascii_texts(count: int):
    rng = random.Random(27)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 '-_/.,&()"
    words = ["the", "and", "t-shirt", "don't", "ANKLE", "boots", "women's", "x-l", "--", "a"]
    for _ in range(count):
        yield "".join(rng.choice(words) + " " if rng.random() < 0.3 else rng.choice(alphabet)
                      for _ in range(rng.randint(0, 40)))


def test_every_ascii_text_is_analyzed_as_before():
    """ASCII text: the same terms as the analyzer before issue 27, by the ASCII shortcut and
    by the path that takes any script (forced here by a word in another script)."""
    for text in _ascii_texts(3000):
        assert analyze(text) == old_analyze(text), text
        assert analyze("Платье " + text) == ["плат", *old_analyze(text)], text


MULTILINGUAL = [
    ("ru-dress", "Платье женское летнее чёрное"), ("ru-tshirt", "Футболка женская белая"),
    ("ru-shirt", "Рубашка мужская в клетку"), ("en-dress", "Women's Summer Dress, Black"),
    ("en-shirt", "Men's Oxford Shirt"), ("el-dress", "Γυναικείο φόρεμα μάξι μαύρο"),
    ("el-bag", "Τσάντα ώμου δερμάτινη"), ("zh-dress", "2024夏季新款女士修身连衣裙黑色"),
    ("zh-shirt", "清仓长袖衬衫男士韩版"), ("ja-dress", "レディース 夏用花柄ワンピース"),
    ("ja-tshirt", "メンズ 半袖Tシャツ 黒"), ("ar-dress", "فستان سهرة نسائي أسود"),
    ("ar-bag", "حقيبة يد نسائية من الجلد"), ("th-dress", "ชุดเดรสผู้หญิง สีดำ"),
    ("th-tshirt", "เสื้อยืดผู้หญิง คอกลม"), ("hi-dress", "महिलाओं की मैक्सी ड्रेस"),
    ("ko-dress", "여성 여름 롱원피스 블랙"), ("de-dress", "Damen Kleid schwarz"),
]


def _tables():
    """Two shards of a metadata-like table (ids, caption, title, category)."""
    rows = sorted(MULTILINGUAL)
    half = len(rows) // 2
    return [pa.table({"item_id": [item for item, _ in part],
                      "caption": ["" for _ in part],
                      "title": [title for _, title in part],
                      "category": [None for _ in part]})
            for part in (rows[:half], rows[half:])]


@pytest.fixture(scope="module")
def multilingual_index(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("text"))
    tables = _tables()
    build_text_index(tables, folder)
    index = TextIndex(folder, [table.num_rows for table in tables])
    ids = [table.column("item_id").to_pylist() for table in tables]

    def search(text, k=5):
        return [ids[shard][row] for shard, row, _ in index.search(text, k)]
    return folder, search


@pytest.mark.parametrize("query, expected", [
    ("платье", "ru-dress"), ("платья", "ru-dress"), ("ПЛАТЬЕМ", "ru-dress"),
    ("φορεματα", "el-dress"), ("τσάντες", "el-bag"), ("连衣裙", "zh-dress"),
    ("衬衫", "zh-shirt"), ("ワンピース", "ja-dress"), ("Tシャツ", "ja-tshirt"),
    ("الفستان", "ar-dress"), ("حقيبة", "ar-bag"), ("เดรส", "th-dress"),
    ("เสื้อยืด", "th-tshirt"), ("ड्रेस", "hi-dress"), ("원피스", "ko-dress"),
    ("dresses", "en-dress"),
])
def test_a_text_index_finds_titles_in_every_script(multilingual_index, query, expected):
    _, search = multilingual_index
    assert search(query)[0] == expected, search(query)


def test_the_russian_dress_is_found_by_its_word_and_nothing_else_is(multilingual_index):
    _, search = multilingual_index
    assert search("платье", k=10) == ["ru-dress"]
    assert set(search("Платье dress", k=10)) == {"ru-dress", "en-dress"}


def test_the_multilingual_text_index_is_the_same_bytes_in_another_process(
        multilingual_index, tmp_path):
    """The vocabulary is numbered in sorted order: another process, with another string
    hash seed, writes the same files."""
    folder, _ = multilingual_index
    script = ("import sys; from tests.test_text_analyzer import _tables; "
              "from catalog_index.text_index import build_text_index; "
              "build_text_index(_tables(), sys.argv[1])")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, cwd=root,
                   env={**os.environ, "PYTHONHASHSEED": "12345"})
    names = sorted(os.listdir(folder))
    assert names and names == sorted(os.listdir(tmp_path))
    for name in names:
        with open(os.path.join(folder, name), "rb") as ours, \
                open(tmp_path / name, "rb") as theirs:
            assert ours.read() == theirs.read(), name
