"""A labelled multilingual product catalog for benchmarks/text_multilingual.py: product
titles for Fashion-MNIST's 10 classes in 11 languages, and the words a shopper types to
find each class.

Hand-written, not scraped: there is no offline multilingual product data set here. For
every language and class there are the product nouns a shop writes in its titles (with
their grammatical gender where adjectives agree), and for every language the words a
title adds around them: who it is for, a style, a color, a material, a size, a brand-like
name, a shop's extra ("free shipping"), arranged by a handful of title patterns in that
language's word order. :func:`titles` combines them, the same way every run (a fixed
seed). The queries are the class's common word in each language, where the language
allows in another form than the titles use (a plural, no accents, another case).

The titles keep the confusions real catalogs have: "Shirt Dress" is a dress and "Dress
Shirt" a shirt, German and Thai write compounds, Chinese titles say "包邮" (free
shipping) with the character of "包" (bag), Japanese "シャツ" (shirt) is inside
"Tシャツ", Arabic plurals are often broken ("حقيبة", "حقائب").
"""

from __future__ import annotations

import random
from typing import Dict, List, Tuple

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")
# Classes whose materials are leather, canvas, suede rather than cloth; shoes' sizes.
ACCESSORIES = {"Sandal", "Sneaker", "Bag", "Ankle boot"}
SHOES = {"Sandal", "Sneaker", "Ankle boot"}
BAG_SIZES = ["30 x 25 cm", "35 x 28 cm", "25 x 18 cm"]
TITLES_PER_CLASS = 30

# Each language: "nouns" {class: [(noun, gender)]}; "queries" {class: [query]}; the slots
# its "patterns" fill, each a list, or a {gender: list} where words agree with the noun;
# "audience" (and "audience_for") has a "dress" entry for the dresses (not for men);
# "materials" a "clothes" and an "accessories" entry; "shoe_size" is the size of shoes
# (bags: BAG_SIZES); "fit" the styles only clothes have. Genders: m, f, n, pl (French: m,
# f, mpl, fpl).
LANGUAGES: Dict[str, dict] = {}

LANGUAGES["English"] = {
    "nouns": {
        "T-shirt/top": ["T-Shirt", "Crew Neck T-Shirt", "Tee", "Tank Top"],
        "Trouser": ["Trousers", "Chinos", "Pants", "Wide-Leg Trousers"],
        "Pullover": ["Pullover", "Sweater", "Jumper", "Knit Pullover"],
        "Dress": ["Dress", "Maxi Dress", "Midi Dress", "Shirt Dress"],
        "Coat": ["Coat", "Trench Coat", "Overcoat", "Parka"],
        "Sandal": ["Sandals", "Strappy Sandals", "Slide Sandals", "Flat Sandals"],
        "Shirt": ["Shirt", "Oxford Shirt", "Dress Shirt", "Flannel Shirt"],
        "Sneaker": ["Sneakers", "Trainers", "Running Shoes", "Low-Top Sneakers"],
        "Bag": ["Bag", "Handbag", "Tote Bag", "Shoulder Bag"],
        "Ankle boot": ["Ankle Boots", "Chelsea Boots", "Ankle Boot", "Booties"],
    },
    "queries": {"T-shirt/top": ["t-shirts"], "Trouser": ["trousers"],
                "Pullover": ["pullovers"], "Dress": ["dresses"], "Coat": ["coats"],
                "Sandal": ["sandal"], "Shirt": ["shirts"], "Sneaker": ["sneakers"],
                "Bag": ["bags"], "Ankle boot": ["ankle boots"]},
    "audience": {"all": ["Women's", "Men's", "Kids'", "Unisex"],
                 "dress": ["Women's", "Girls'"]},
    "style": ["Classic", "Casual", "Elegant", "Slim-Fit", "Oversized", "Lightweight"],
    "fit": ["Slim-Fit", "Oversized"],
    "color": ["Black", "White", "Navy Blue", "Red", "Grey", "Beige", "Olive Green"],
    "materials": {"clothes": ["Cotton", "Linen", "Wool", "Organic Cotton"],
                  "accessories": ["Leather", "Suede", "Canvas", "Vegan Leather"]},
    "size": ["Size M", "Size L", "Size 10", "UK 8", "XL"],
    "shoe_size": ["Size 7", "Size 9", "UK 6", "EU 39", "EU 42"],
    "brand": ["Northwind", "Aurelia", "Blue Harbor", "Lumen & Co"],
    "extra": ["Free Shipping", "New Season", "Sale"],
    "patterns": ["{audience} {style} {noun} - {color}, {size}",
                 "{brand} {audience} {material} {noun} {color}",
                 "{style} {color} {noun} for {audience_for}",
                 "{noun} {audience} {material} {color} {size}",
                 "{brand} {style} {noun}, {color} ({extra})"],
}
LANGUAGES["English"]["audience_for"] = {"all": ["Women", "Men", "Kids"],
                                         "dress": ["Women", "Girls"]}

LANGUAGES["German"] = {
    "nouns": {
        "T-shirt/top": [("T-Shirt", "n"), ("Basic T-Shirt", "n"), ("Top", "n"),
                        ("Tanktop", "n")],
        "Trouser": [("Hose", "f"), ("Stoffhose", "f"), ("Chinohose", "f"), ("Jeans", "f")],
        "Pullover": [("Pullover", "m"), ("Strickpullover", "m"), ("Pulli", "m"),
                     ("Rollkragenpullover", "m")],
        "Dress": [("Kleid", "n"), ("Sommerkleid", "n"), ("Maxikleid", "n"),
                  ("Blusenkleid", "n")],
        "Coat": [("Mantel", "m"), ("Wintermantel", "m"), ("Trenchcoat", "m"), ("Parka", "m")],
        "Sandal": [("Sandalen", "pl"), ("Riemchensandalen", "pl"), ("Sandale", "f"),
                   ("Sandaletten", "pl")],
        "Shirt": [("Hemd", "n"), ("Oberhemd", "n"), ("Flanellhemd", "n"),
                  ("Businesshemd", "n")],
        "Sneaker": [("Sneaker", "m"), ("Turnschuhe", "pl"), ("Laufschuhe", "pl"),
                    ("Low Sneaker", "m")],
        "Bag": [("Tasche", "f"), ("Handtasche", "f"), ("Umhängetasche", "f"),
                ("Shopper", "m")],
        "Ankle boot": [("Stiefeletten", "pl"), ("Ankle Boots", "pl"), ("Chelsea Boots", "pl"),
                       ("Stiefelette", "f")],
    },
    "queries": {"T-shirt/top": ["t-shirts"], "Trouser": ["hosen"], "Pullover": ["pullover"],
                "Dress": ["kleider"], "Coat": ["mäntel"], "Sandal": ["sandale"],
                "Shirt": ["hemden"], "Sneaker": ["sneakers"], "Bag": ["taschen"],
                "Ankle boot": ["stiefelette"]},
    "audience": {"all": ["Damen", "Herren", "Kinder", "Unisex"], "dress": ["Damen", "Mädchen"]},
    "style": {"m": ["Eleganter", "Klassischer", "Lässiger", "Leichter"],
              "f": ["Elegante", "Klassische", "Lässige", "Leichte"],
              "n": ["Elegantes", "Klassisches", "Lässiges", "Leichtes"],
              "pl": ["Elegante", "Klassische", "Lässige", "Leichte"]},
    "color": ["schwarz", "weiß", "dunkelblau", "rot", "grau", "beige", "olivgrün"],
    "materials": {"clothes": ["aus Baumwolle", "aus Leinen", "aus Wolle", "aus Bio-Baumwolle"],
                  "accessories": ["aus Leder", "aus Veloursleder", "aus Canvas",
                                  "aus veganem Leder"]},
    "size": ["Gr. 38", "Gr. 42", "Größe M", "Größe L", "XL"],
    "shoe_size": ["Gr. 38", "Gr. 39", "Gr. 42", "Größe 40"],
    "brand": ["Nordwind", "Aurelia", "Blauer Hafen", "Lumen & Co"],
    "extra": ["versandkostenfrei", "Neue Kollektion", "Sale"],
    "patterns": ["{audience} {noun} {color} {size}",
                 "{style} {audience} {noun} {material}, {color}",
                 "{brand} {audience}-{noun} {color}",
                 "{noun} {audience} {material} {color} - {size}",
                 "{brand} {style} {noun} {color} ({extra})"],
}

LANGUAGES["French"] = {
    "nouns": {
        "T-shirt/top": [("T-shirt", "m"), ("Tee-shirt", "m"), ("Débardeur", "m"),
                        ("T-shirt col rond", "m")],
        "Trouser": [("Pantalon", "m"), ("Pantalon chino", "m"), ("Jean", "m"),
                    ("Pantalon large", "m")],
        "Pullover": [("Pull", "m"), ("Pull-over", "m"), ("Pull col roulé", "m"),
                     ("Pull en maille", "m")],
        "Dress": [("Robe", "f"), ("Robe longue", "f"), ("Robe d'été", "f"),
                  ("Robe chemise", "f")],
        "Coat": [("Manteau", "m"), ("Trench", "m"), ("Parka", "f"), ("Manteau long", "m")],
        "Sandal": [("Sandales", "fpl"), ("Nu-pieds", "mpl"), ("Sandales à talon", "fpl"),
                   ("Sandales plates", "fpl")],
        "Shirt": [("Chemise", "f"), ("Chemise à carreaux", "f"),
                  ("Chemise manches longues", "f"), ("Chemise oxford", "f")],
        "Sneaker": [("Baskets", "fpl"), ("Sneakers", "fpl"), ("Chaussures de running", "fpl"),
                    ("Baskets basses", "fpl")],
        "Bag": [("Sac à main", "m"), ("Sac", "m"), ("Sac bandoulière", "m"), ("Cabas", "m")],
        "Ankle boot": [("Bottines", "fpl"), ("Boots", "fpl"), ("Bottines à talon", "fpl"),
                       ("Boots Chelsea", "fpl")],
    },
    "queries": {"T-shirt/top": ["t-shirts"], "Trouser": ["pantalons"], "Pullover": ["pulls"],
                "Dress": ["robes"], "Coat": ["manteaux"], "Sandal": ["sandale"],
                "Shirt": ["chemises"], "Sneaker": ["basket"], "Bag": ["sacs"],
                "Ankle boot": ["bottine"]},
    "audience": {"all": ["femme", "homme", "enfant", "mixte"], "dress": ["femme", "fille"]},
    "style": {"m": ["élégant", "classique", "décontracté", "léger"],
              "f": ["élégante", "classique", "décontractée", "légère"],
              "mpl": ["élégants", "classiques", "décontractés", "légers"],
              "fpl": ["élégantes", "classiques", "décontractées", "légères"]},
    "color": {"m": ["noir", "blanc", "bleu marine", "rouge", "gris", "beige", "vert olive"],
              "f": ["noire", "blanche", "bleu marine", "rouge", "grise", "beige", "vert olive"],
              "mpl": ["noirs", "blancs", "bleu marine", "rouges", "gris", "beiges",
                      "vert olive"],
              "fpl": ["noires", "blanches", "bleu marine", "rouges", "grises", "beiges",
                      "vert olive"]},
    "materials": {"clothes": ["en coton", "en lin", "en laine", "en coton bio"],
                  "accessories": ["en cuir", "en daim", "en toile", "en cuir végan"]},
    "size": ["taille 38", "taille 42", "taille M", "taille L", "T. 40"],
    "shoe_size": ["pointure 38", "pointure 40", "pointure 42", "P. 39"],
    "brand": ["Vent du Nord", "Aurélia", "Port Bleu", "Lumen & Co"],
    "extra": ["livraison gratuite", "nouvelle collection", "soldes"],
    "patterns": ["{noun} {style} {audience} {color}",
                 "{noun} {audience} {material} {color} - {size}",
                 "{brand} - {noun} {color} {style}",
                 "{noun} {color} {audience} {size}",
                 "{brand} {noun} {style} {material} ({extra})"],
}

LANGUAGES["Russian"] = {
    "nouns": {
        "T-shirt/top": [("Футболка", "f"), ("Майка", "f"), ("Футболка оверсайз", "f"),
                        ("Топ", "m")],
        "Trouser": [("Брюки", "pl"), ("Брюки чинос", "pl"), ("Штаны", "pl"),
                    ("Брюки палаццо", "pl")],
        "Pullover": [("Свитер", "m"), ("Джемпер", "m"), ("Пуловер", "m"), ("Свитшот", "m")],
        "Dress": [("Платье", "n"), ("Платье миди", "n"), ("Платье макси", "n"),
                  ("Платье-рубашка", "n")],
        "Coat": [("Пальто", "n"), ("Куртка", "f"), ("Плащ", "m"), ("Парка", "f")],
        "Sandal": [("Сандалии", "pl"), ("Босоножки", "pl"), ("Сандалии на платформе", "pl"),
                   ("Шлёпанцы", "pl")],
        "Shirt": [("Рубашка", "f"), ("Рубашка в клетку", "f"), ("Рубашка оверсайз", "f"),
                  ("Рубашка с длинным рукавом", "f")],
        "Sneaker": [("Кроссовки", "pl"), ("Кеды", "pl"), ("Кроссовки для бега", "pl"),
                    ("Кроссовки на платформе", "pl")],
        "Bag": [("Сумка", "f"), ("Сумка через плечо", "f"), ("Сумка-шопер", "f"),
                ("Рюкзак", "m")],
        "Ankle boot": [("Ботинки", "pl"), ("Ботильоны", "pl"), ("Челси", "pl"),
                       ("Полусапожки", "pl")],
    },
    "queries": {"T-shirt/top": ["футболки"], "Trouser": ["брюк"], "Pullover": ["свитера"],
                "Dress": ["платья"], "Coat": ["пальто", "куртки"], "Sandal": ["сандалий"],
                "Shirt": ["рубашки"], "Sneaker": ["кроссовки"], "Bag": ["сумки"],
                "Ankle boot": ["ботинок"]},
    "audience": {"m": ["женский", "мужской", "детский"], "f": ["женская", "мужская", "детская"],
                 "n": ["женское", "мужское", "детское"], "pl": ["женские", "мужские", "детские"],
                 "dress": {"n": ["женское", "для девочки"], "f": ["женская"]}},
    "style": {"m": ["классический", "летний", "повседневный", "базовый"],
              "f": ["классическая", "летняя", "повседневная", "базовая"],
              "n": ["классическое", "летнее", "повседневное", "базовое"],
              "pl": ["классические", "летние", "повседневные", "базовые"]},
    "color": {"m": ["чёрный", "белый", "синий", "красный", "серый", "бежевый", "зелёный"],
              "f": ["чёрная", "белая", "синяя", "красная", "серая", "бежевая", "зелёная"],
              "n": ["чёрное", "белое", "синее", "красное", "серое", "бежевое", "зелёное"],
              "pl": ["чёрные", "белые", "синие", "красные", "серые", "бежевые", "зелёные"]},
    "materials": {"clothes": ["из хлопка", "из льна", "из шерсти", "из вискозы"],
                  "accessories": ["из натуральной кожи", "из замши", "из текстиля",
                                  "из экокожи"]},
    "size": ["размер 44", "размер 46", "размер 48", "р. 42-44", "размер M"],
    "shoe_size": ["размер 37", "размер 38", "размер 40", "р. 42"],
    "brand": ["Nordwind", "Аврора", "Северянка", "Lumen"],
    "extra": ["бесплатная доставка", "новая коллекция", "распродажа"],
    "patterns": ["{noun} {audience} {style} {color}",
                 "{noun} {audience} {material}, {color}, {size}",
                 "{brand} / {noun} {audience} {style}",
                 "{style} {noun_lower} {material}",
                 "{noun} {style} {color} {size}"],
}

LANGUAGES["Greek"] = {
    "nouns": {
        "T-shirt/top": [("μπλουζάκι", "n"), ("κοντομάνικο μπλουζάκι", "n"), ("T-shirt", "n"),
                        ("αμάνικο μπλουζάκι", "n")],
        "Trouser": [("παντελόνι", "n"), ("τζιν παντελόνι", "n"), ("παντελόνι chino", "n"),
                    ("υφασμάτινο παντελόνι", "n")],
        "Pullover": [("πουλόβερ", "n"), ("πλεκτό πουλόβερ", "n"), ("πουλόβερ ζιβάγκο", "n"),
                     ("φούτερ", "n")],
        "Dress": [("φόρεμα", "n"), ("μάξι φόρεμα", "n"), ("μίνι φόρεμα", "n"),
                  ("φόρεμα σεμιζιέ", "n")],
        "Coat": [("παλτό", "n"), ("καμπαρντίνα", "f"), ("μπουφάν", "n"), ("μακρύ παλτό", "n")],
        "Sandal": [("σανδάλια", "pl"), ("πέδιλα", "pl"), ("σανδάλια με λουράκια", "pl"),
                   ("flat σανδάλια", "pl")],
        "Shirt": [("πουκάμισο", "n"), ("μακρυμάνικο πουκάμισο", "n"), ("καρό πουκάμισο", "n"),
                  ("πουκάμισο oxford", "n")],
        "Sneaker": [("αθλητικά παπούτσια", "pl"), ("sneakers", "pl"), ("αθλητικά", "pl"),
                    ("παπούτσια για τρέξιμο", "pl")],
        "Bag": [("τσάντα", "f"), ("τσάντα ώμου", "f"), ("τσάντα χιαστί", "f"),
                ("σακίδιο πλάτης", "n")],
        "Ankle boot": [("μποτάκια", "pl"), ("μποτάκια αστραγάλου", "pl"),
                       ("chelsea μποτάκια", "pl"), ("μποτάκι", "n")],
    },
    # Typed as shoppers often do: without accents.
    "queries": {"T-shirt/top": ["μπλουζακια"], "Trouser": ["παντελονια"],
                "Pullover": ["πουλοβερ"], "Dress": ["φορεματα"], "Coat": ["παλτο"],
                "Sandal": ["σανδαλι"], "Shirt": ["πουκαμισα"],
                "Sneaker": ["αθλητικα παπουτσια"], "Bag": ["τσαντες"],
                "Ankle boot": ["μποτακι"]},
    "audience": {"m": ["γυναικείος", "ανδρικός", "παιδικός"],
                 "f": ["γυναικεία", "ανδρική", "παιδική"],
                 "n": ["γυναικείο", "ανδρικό", "παιδικό"],
                 "pl": ["γυναικεία", "ανδρικά", "παιδικά"],
                 "dress": {"n": ["γυναικείο", "παιδικό"]}},
    "style": {"m": ["κλασικός", "καλοκαιρινός", "κομψός", "βασικός"],
              "f": ["κλασική", "καλοκαιρινή", "κομψή", "βασική"],
              "n": ["κλασικό", "καλοκαιρινό", "κομψό", "βασικό"],
              "pl": ["κλασικά", "καλοκαιρινά", "κομψά", "βασικά"]},
    "color": {"m": ["μαύρος", "λευκός", "μπλε", "κόκκινος", "γκρι", "μπεζ", "πράσινος"],
              "f": ["μαύρη", "λευκή", "μπλε", "κόκκινη", "γκρι", "μπεζ", "πράσινη"],
              "n": ["μαύρο", "λευκό", "μπλε", "κόκκινο", "γκρι", "μπεζ", "πράσινο"],
              "pl": ["μαύρα", "λευκά", "μπλε", "κόκκινα", "γκρι", "μπεζ", "πράσινα"]},
    "materials": {"clothes": ["από βαμβάκι", "από λινό", "από μαλλί", "από οργανικό βαμβάκι"],
                  "accessories": ["από δέρμα", "από σουέτ", "από καμβά", "από οικολογικό δέρμα"]},
    "size": ["Μέγεθος M", "Μέγεθος L", "Νο 38", "Νο 40", "XL"],
    "shoe_size": ["Νο 37", "Νο 38", "Νο 40", "Νο 42"],
    "brand": ["Nordwind", "Aurelia", "Γαλάζιο Λιμάνι", "Lumen & Co"],
    "extra": ["δωρεάν μεταφορικά", "νέα συλλογή", "προσφορά"],
    "patterns": ["{audience} {noun_lower} {style} {color}",
                 "{noun} {color} {material} - {size}",
                 "{brand} {audience} {noun_lower} {color}",
                 "{style} {noun_lower} {audience}, {color}",
                 "{brand} {noun_lower} {material} ({extra})"],
}

LANGUAGES["Chinese"] = {
    "nouns": {
        "T-shirt/top": ["T恤", "短袖T恤", "圆领T恤", "背心"],
        "Trouser": ["裤子", "长裤", "休闲裤", "西裤", "阔腿裤"],
        "Pullover": ["毛衣", "针织衫", "套头毛衣", "卫衣"],
        "Dress": ["连衣裙", "长裙", "碎花连衣裙", "衬衫裙"],
        "Coat": ["大衣", "外套", "风衣", "羽绒服"],
        "Sandal": ["凉鞋", "罗马凉鞋", "沙滩凉鞋", "平底凉鞋"],
        "Shirt": ["衬衫", "衬衣", "格子衬衫", "长袖衬衫"],
        "Sneaker": ["运动鞋", "板鞋", "小白鞋", "跑步鞋"],
        "Bag": ["手提包", "单肩包", "斜挎包", "托特包", "包包"],
        "Ankle boot": ["短靴", "踝靴", "切尔西靴", "马丁靴"],
    },
    "queries": {"T-shirt/top": ["T恤"], "Trouser": ["裤子"], "Pullover": ["毛衣"],
                "Dress": ["连衣裙"], "Coat": ["大衣", "外套"], "Sandal": ["凉鞋"],
                "Shirt": ["衬衫"], "Sneaker": ["运动鞋"], "Bag": ["包", "手提包"],
                "Ankle boot": ["短靴"]},
    "audience": {"all": ["女", "男", "女士", "男士", "儿童"], "dress": ["女", "女士", "女童"]},
    "style": ["修身", "宽松", "百搭", "简约", "韩版", "复古", "时尚"],
    "fit": ["修身", "宽松"],
    "season": ["夏季", "冬季", "春秋", "2024新款", "新款"],
    "color": ["黑色", "白色", "红色", "藏青色", "灰色", "米色", "绿色"],
    "materials": {"clothes": ["纯棉", "亚麻", "羊毛", "雪纺"],
                  "accessories": ["真皮", "牛皮", "帆布", "PU皮"]},
    "size": ["M码", "L码", "XL", "均码"],
    "shoe_size": ["37码", "38码", "40码", "42码"],
    "brand": ["云裳", "素衣", "北辰", "Lumen"],
    "extra": ["包邮", "特价", "清仓", "正品"],
    "patterns": ["{season}{audience}{style}{noun}{color}",
                 "{brand} {audience}{material}{noun} {color} {size}",
                 "{extra}{noun}{audience}{style}{season}",
                 "{style}{material}{noun}{audience} {color}",
                 "{brand}{season}{noun} {extra}"],
}

LANGUAGES["Japanese"] = {
    "nouns": {
        "T-shirt/top": ["Tシャツ", "半袖Tシャツ", "カットソー", "タンクトップ"],
        "Trouser": ["パンツ", "ズボン", "スラックス", "ワイドパンツ", "チノパン"],
        "Pullover": ["セーター", "ニット", "プルオーバー", "ニットセーター"],
        "Dress": ["ワンピース", "ロングワンピース", "ドレス", "シャツワンピース"],
        "Coat": ["コート", "トレンチコート", "チェスターコート", "ロングコート"],
        "Sandal": ["サンダル", "ストラップサンダル", "ビーチサンダル", "厚底サンダル"],
        "Shirt": ["シャツ", "ワイシャツ", "ネルシャツ", "長袖シャツ"],
        "Sneaker": ["スニーカー", "運動靴", "ランニングシューズ", "ローカットスニーカー"],
        "Bag": ["バッグ", "トートバッグ", "ショルダーバッグ", "かばん"],
        "Ankle boot": ["ショートブーツ", "アンクルブーツ", "サイドゴアブーツ", "ブーティー"],
    },
    "queries": {"T-shirt/top": ["Tシャツ"], "Trouser": ["パンツ", "ズボン"],
                "Pullover": ["セーター"], "Dress": ["ワンピース"], "Coat": ["コート"],
                "Sandal": ["サンダル"], "Shirt": ["シャツ"], "Sneaker": ["スニーカー"],
                "Bag": ["バッグ"], "Ankle boot": ["ブーツ"]},
    "audience": {"all": ["レディース", "メンズ", "キッズ", "ユニセックス"],
                 "dress": ["レディース", "女の子"]},
    "style": ["おしゃれ", "カジュアル", "きれいめ", "体型カバー", "大きいサイズ", "ゆったり"],
    "fit": ["体型カバー", "ゆったり"],
    "season": ["春夏", "秋冬", "夏用", "冬用", "新作"],
    "color": ["ブラック", "ホワイト", "ネイビー", "ベージュ", "グレー", "黒", "白"],
    "materials": {"clothes": ["綿100%", "リネン", "ウール", "コットン"],
                  "accessories": ["本革", "合皮", "キャンバス", "スエード"]},
    "size": ["S", "M", "L", "フリーサイズ"],
    "shoe_size": ["23.5cm", "24cm", "25cm", "26.5cm"],
    "brand": ["ノースウィンド", "AURELIA", "青い港", "Lumen"],
    "extra": ["送料無料", "即納", "セール"],
    "patterns": ["{audience} {noun} {season} {style} {color} {size}",
                 "{season}{noun} {audience} {material}",
                 "{brand} {noun} {color}",
                 "【{extra}】{noun} {audience} {style}",
                 "{style}{noun} {material} {color}"],
}

LANGUAGES["Korean"] = {
    "nouns": {
        "T-shirt/top": ["티셔츠", "반팔티", "반팔 티셔츠", "나시티"],
        "Trouser": ["바지", "슬랙스", "면바지", "와이드 팬츠"],
        "Pullover": ["스웨터", "니트", "풀오버 니트", "맨투맨"],
        "Dress": ["원피스", "롱원피스", "드레스", "셔츠원피스"],
        "Coat": ["코트", "트렌치코트", "롱코트", "울코트"],
        "Sandal": ["샌들", "스트랩 샌들", "샌달", "플랫 샌들"],
        "Shirt": ["셔츠", "남방", "체크셔츠", "옥스포드 셔츠"],
        "Sneaker": ["운동화", "스니커즈", "러닝화", "캔버스화"],
        "Bag": ["가방", "숄더백", "토트백", "크로스백"],
        "Ankle boot": ["앵클부츠", "첼시부츠", "부츠", "워커"],
    },
    "queries": {"T-shirt/top": ["티셔츠"], "Trouser": ["바지"], "Pullover": ["니트", "스웨터"],
                "Dress": ["원피스"], "Coat": ["코트"], "Sandal": ["샌들"], "Shirt": ["셔츠"],
                "Sneaker": ["운동화"], "Bag": ["가방"], "Ankle boot": ["부츠"]},
    "audience": {"all": ["여성", "남성", "아동"], "dress": ["여성", "여아"]},
    "style": ["오버핏", "기본", "데일리", "루즈핏", "슬림핏", "빅사이즈"],
    "fit": ["오버핏", "루즈핏", "슬림핏"],
    "season": ["여름", "겨울", "봄가을", "신상"],
    "color": ["블랙", "화이트", "네이비", "베이지", "그레이", "검정"],
    "materials": {"clothes": ["면", "린넨", "울", "코튼"],
                  "accessories": ["가죽", "천연가죽", "캔버스", "스웨이드"]},
    "size": ["S", "M", "L", "프리사이즈"],
    "shoe_size": ["230mm", "240mm", "250mm", "270mm"],
    "brand": ["노스윈드", "AURELIA", "푸른항구", "Lumen"],
    "extra": ["무료배송", "당일발송", "특가"],
    "patterns": ["{audience} {season} {style} {noun} {color}",
                 "{brand} {noun} {material} {color} {size}",
                 "[{extra}] {style} {noun} {audience}용",
                 "{season} {noun} {audience} {material}",
                 "{brand} {audience} {noun} {style}"],
}

LANGUAGES["Arabic"] = {
    "nouns": {
        "T-shirt/top": [("تيشيرت", "m"), ("تي شيرت", "m"), ("تيشيرت بأكمام قصيرة", "m"),
                        ("توب", "m")],
        "Trouser": [("بنطلون", "m"), ("بنطال", "m"), ("بنطلون جينز", "m"), ("سروال", "m")],
        "Pullover": [("بلوفر", "m"), ("سويتر", "m"), ("كنزة صوف", "f"), ("بلوفر محبوك", "m")],
        "Dress": [("فستان", "m"), ("فستان سهرة", "m"), ("فستان طويل", "m"),
                  ("فستان ماكسي", "m")],
        "Coat": [("معطف", "m"), ("جاكيت", "m"), ("بالطو", "m"), ("معطف مطر", "m")],
        "Sandal": [("صندل", "m"), ("صنادل", "f"), ("صندل بكعب", "m"), ("صندل مسطح", "m")],
        "Shirt": [("قميص", "m"), ("قميص كاروهات", "m"), ("قميص بأكمام طويلة", "m"),
                  ("قميص رسمي", "m")],
        "Sneaker": [("حذاء رياضي", "m"), ("سنيكرز", "m"), ("حذاء جري", "m"), ("كوتشي", "m")],
        "Bag": [("حقيبة يد", "f"), ("حقيبة", "f"), ("شنطة", "f"), ("حقيبة كتف", "f")],
        "Ankle boot": [("بوت", "m"), ("حذاء بوت قصير", "m"), ("جزمة", "f"), ("بوت شيلسي", "m")],
    },
    # Sound plurals and the article where a shopper types them; "حقائب" is a broken plural.
    "queries": {"T-shirt/top": ["تيشيرتات"], "Trouser": ["بنطلونات"], "Pullover": ["البلوفر"],
                "Dress": ["الفستان"], "Coat": ["المعطف"], "Sandal": ["صنادل"],
                "Shirt": ["القميص"], "Sneaker": ["احذية رياضية"], "Bag": ["حقيبة", "حقائب"],
                "Ankle boot": ["البوت"]},
    "audience": {"m": ["نسائي", "رجالي", "للأطفال"], "f": ["نسائية", "رجالية", "للأطفال"],
                 "dress": {"m": ["نسائي", "بناتي"]}},
    "style": {"m": ["كلاسيكي", "أنيق", "صيفي", "كاجوال", "عصري"],
              "f": ["كلاسيكية", "أنيقة", "صيفية", "كاجوال", "عصرية"]},
    "color": {"m": ["أسود", "أبيض", "أحمر", "أزرق", "رمادي", "بيج", "كحلي"],
              "f": ["سوداء", "بيضاء", "حمراء", "زرقاء", "رمادية", "بيج", "كحلية"]},
    "materials": {"clothes": ["من القطن", "قطن 100%", "من الكتان", "من الصوف"],
                  "accessories": ["من الجلد الطبيعي", "جلد صناعي", "من الشامواه", "من القماش"]},
    "size": ["مقاس M", "مقاس L", "مقاس XL", "مقاس 38"],
    "shoe_size": ["مقاس 37", "مقاس 38", "مقاس 40", "مقاس 42"],
    "brand": ["نوردويند", "أوريليا", "Lumen", "المرفأ الأزرق"],
    "extra": ["شحن مجاني", "تشكيلة جديدة", "تخفيضات"],
    "patterns": ["{noun} {audience} {style} {color}",
                 "{noun} {audience} {material} - {color} - {size}",
                 "{brand} {noun} {style} {color}",
                 "{noun} {color} {size} ({extra})",
                 "{noun} {style} {audience} {material}"],
}

LANGUAGES["Thai"] = {
    "nouns": {
        "T-shirt/top": ["เสื้อยืด", "เสื้อยืดคอกลม", "เสื้อยืดโอเวอร์ไซส์", "เสื้อกล้าม"],
        "Trouser": ["กางเกง", "กางเกงขายาว", "กางเกงสแล็ค", "กางเกงยีนส์"],
        "Pullover": ["เสื้อสเวตเตอร์", "เสื้อไหมพรม", "สเวตเตอร์", "เสื้อไหมพรมคอเต่า"],
        "Dress": ["ชุดเดรส", "เดรส", "เดรสยาว", "เดรสเชิ้ต"],
        "Coat": ["เสื้อโค้ท", "โค้ทยาว", "เสื้อแจ็คเก็ต", "เสื้อโค้ทกันหนาว"],
        "Sandal": ["รองเท้าแตะ", "รองเท้ารัดส้น", "รองเท้าแตะแบบสวม", "รองเท้าซันดัล"],
        "Shirt": ["เสื้อเชิ้ต", "เสื้อเชิ้ตแขนยาว", "เสื้อเชิ้ตลายสก็อต", "เสื้อเชิ้ตทำงาน"],
        "Sneaker": ["รองเท้าผ้าใบ", "รองเท้าสนีกเกอร์", "รองเท้าวิ่ง", "รองเท้าผ้าใบหุ้มข้อ"],
        "Bag": ["กระเป๋า", "กระเป๋าสะพายข้าง", "กระเป๋าถือ", "กระเป๋าผ้า"],
        "Ankle boot": ["รองเท้าบูท", "รองเท้าบูทหุ้มข้อ", "บูทสั้น", "รองเท้าบูทเชลซี"],
    },
    "queries": {"T-shirt/top": ["เสื้อยืด"], "Trouser": ["กางเกง"], "Pullover": ["สเวตเตอร์"],
                "Dress": ["เดรส"], "Coat": ["เสื้อโค้ท"], "Sandal": ["รองเท้าแตะ"],
                "Shirt": ["เสื้อเชิ้ต"], "Sneaker": ["รองเท้าผ้าใบ"], "Bag": ["กระเป๋า"],
                "Ankle boot": ["รองเท้าบูท"]},
    "audience": {"all": ["ผู้หญิง", "ผู้ชาย", "เด็ก", "สำหรับผู้หญิง"],
                 "dress": ["ผู้หญิง", "เด็กผู้หญิง"]},
    "style": ["แฟชั่น", "สไตล์เกาหลี", "ใส่สบาย", "มินิมอล", "ทรงหลวม", "ทรงสลิม"],
    "fit": ["ทรงหลวม", "ทรงสลิม"],
    "color": ["สีดำ", "สีขาว", "สีแดง", "สีกรม", "สีเทา", "สีครีม", "สีเขียว"],
    "materials": {"clothes": ["ผ้าฝ้าย", "ผ้าลินิน", "ผ้าวูล", "ผ้าคอตตอน"],
                  "accessories": ["หนังแท้", "หนังเทียม", "หนังกลับ", "หนังพียู"]},
    "size": ["ไซส์ M", "ไซส์ L", "ไซส์ XL", "ฟรีไซส์"],
    "shoe_size": ["ไซส์ 37", "ไซส์ 38", "ไซส์ 40", "ไซส์ 42"],
    "brand": ["นอร์ธวินด์", "AURELIA", "Lumen"],
    "extra": ["พร้อมส่ง", "ราคาถูก", "ส่งฟรี", "ของแท้"],
    "patterns": ["{noun}{audience} {style} {material} {color}",
                 "{noun} {color} {size} {extra}",
                 "{extra} {noun}{style}{color}",
                 "{brand} {noun}{audience} {size}",
                 "{noun}{material}{audience} {color}"],
}

LANGUAGES["Hindi"] = {
    "nouns": {
        "T-shirt/top": [("टी-शर्ट", "f"), ("टीशर्ट", "f"), ("टी शर्ट", "f"),
                        ("हाफ स्लीव टी-शर्ट", "f")],
        "Trouser": [("पैंट", "f"), ("पतलून", "f"), ("ट्राउज़र", "m"), ("चिनो पैंट", "f")],
        "Pullover": [("स्वेटर", "m"), ("पुलओवर", "m"), ("ऊनी स्वेटर", "m"),
                     ("स्वेटशर्ट", "f")],
        "Dress": [("ड्रेस", "f"), ("मैक्सी ड्रेस", "f"), ("पोशाक", "f"), ("फ्रॉक", "f")],
        "Coat": [("कोट", "m"), ("ओवरकोट", "m"), ("जैकेट", "f"), ("ट्रेंच कोट", "m")],
        "Sandal": [("सैंडल", "f"), ("चप्पल", "f"), ("फ्लैट सैंडल", "f"), ("हील सैंडल", "f")],
        "Shirt": [("शर्ट", "f"), ("कमीज़", "f"), ("चेक शर्ट", "f"), ("फॉर्मल शर्ट", "f")],
        "Sneaker": [("स्नीकर्स", "pl"), ("स्पोर्ट्स शूज़", "pl"), ("कैनवास जूते", "pl"),
                    ("रनिंग शूज़", "pl")],
        "Bag": [("बैग", "m"), ("हैंडबैग", "m"), ("थैला", "m"), ("स्लिंग बैग", "m")],
        "Ankle boot": [("एंकल बूट", "pl"), ("बूट्स", "pl"), ("चेल्सी बूट", "pl"),
                       ("छोटे बूट", "pl")],
    },
    "queries": {"T-shirt/top": ["टी-शर्ट"], "Trouser": ["पैंट"], "Pullover": ["स्वेटर"],
                "Dress": ["ड्रेस"], "Coat": ["कोट"], "Sandal": ["सैंडल"],
                "Shirt": ["कमीजें", "शर्ट"], "Sneaker": ["स्नीकर्स"], "Bag": ["बैग"],
                "Ankle boot": ["बूट"]},
    "audience": {"m": ["महिलाओं का", "पुरुषों का", "बच्चों का"],
                 "f": ["महिलाओं की", "पुरुषों की", "बच्चों की"],
                 "pl": ["महिलाओं के", "पुरुषों के", "बच्चों के"],
                 "dress": {"f": ["महिलाओं की", "लड़कियों की"]}},
    "style": {"m": ["कैज़ुअल", "स्टाइलिश", "आरामदायक", "नया"],
              "f": ["कैज़ुअल", "स्टाइलिश", "आरामदायक", "नई"],
              "pl": ["कैज़ुअल", "स्टाइलिश", "आरामदायक", "नए"]},
    "color": {"m": ["काला", "सफ़ेद", "लाल", "नीला", "स्लेटी", "बेज", "हरा"],
              "f": ["काली", "सफ़ेद", "लाल", "नीली", "स्लेटी", "बेज", "हरी"],
              "pl": ["काले", "सफ़ेद", "लाल", "नीले", "स्लेटी", "बेज", "हरे"]},
    "materials": {"clothes": {"m": ["सूती", "लिनन", "ऊनी"], "f": ["सूती", "लिनन", "ऊनी"],
                              "pl": ["सूती", "लिनन", "ऊनी"]},
                  "accessories": {"m": ["चमड़े का", "कैनवास का", "सिंथेटिक"],
                                  "f": ["चमड़े की", "कैनवास की", "सिंथेटिक"],
                                  "pl": ["चमड़े के", "कैनवास के", "सिंथेटिक"]}},
    "size": ["साइज़ M", "साइज़ L", "साइज़ XL", "साइज़ 40"],
    "shoe_size": ["साइज़ 6", "साइज़ 7", "साइज़ 8", "साइज़ 9"],
    "audience_for": {"all": ["महिलाओं के लिए", "पुरुषों के लिए", "बच्चों के लिए"],
                     "dress": ["महिलाओं के लिए", "लड़कियों के लिए"]},
    "brand": ["नॉर्थविंड", "AURELIA", "Lumen"],
    "extra": ["फ्री डिलीवरी", "नया कलेक्शन", "सेल"],
    "patterns": ["{audience} {style} {noun} - {color}",
                 "{brand} {audience} {material} {noun} {color} {size}",
                 "{color} {noun}, {audience_for}",
                 "{audience} {noun} {material} {size}",
                 "{brand} {style} {noun} ({extra})"],
}


def _pick(rng: random.Random, words, gender: str):
    """A word of a slot: from its list, or from its list for the noun's gender."""
    if isinstance(words, dict):
        words = words.get(gender) or words.get("all")
    return rng.choice(words)


def _styles(spec: dict, name: str):
    if name not in ACCESSORIES or "fit" not in spec:
        return spec["style"]
    return [style for style in spec["style"] if style not in spec["fit"]]


def _noun(entry) -> Tuple[str, str]:
    return entry if isinstance(entry, tuple) else (entry, "all")


def titles(language: str) -> List[Tuple[str, str]]:
    """-> [(title, class)]: TITLES_PER_CLASS titles of each class in the language."""
    spec = LANGUAGES[language]
    found = []
    for name in CLASSES:
        rng = random.Random(f"{language}:{name}")
        for _ in range(TITLES_PER_CLASS):
            noun, gender = _noun(rng.choice(spec["nouns"][name]))
            audience = spec["audience"]
            if name == "Dress":
                audience = audience["dress"]
            slots = {
                "noun": noun, "noun_lower": noun[:1].lower() + noun[1:],
                "audience": _pick(rng, audience, gender),
                "style": _pick(rng, _styles(spec, name), gender),
                "color": _pick(rng, spec["color"], gender),
                "material": _pick(rng, spec["materials"][
                    "accessories" if name in ACCESSORIES else "clothes"], gender),
                "size": rng.choice(BAG_SIZES if name == "Bag" else spec[
                    "shoe_size" if name in SHOES else "size"]),
                "brand": rng.choice(spec["brand"]),
                "extra": rng.choice(spec["extra"]),
                "season": rng.choice(spec.get("season", [""])),
            }
            if "audience_for" in spec:
                words = spec["audience_for"]
                slots["audience_for"] = _pick(
                    rng, words["dress"] if name == "Dress" else words, gender)
            title = rng.choice(spec["patterns"]).format(**slots)
            found.append((title[:1].upper() + title[1:], name))
    return found


def queries(language: str) -> List[Tuple[str, str]]:
    """-> [(query, class)] of the language."""
    return [(query, name) for name in CLASSES
            for query in LANGUAGES[language]["queries"][name]]
