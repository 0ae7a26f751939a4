"""Word pools and example generators of the synthetic EcomInstruct sample.

Each generator maps a seeded ``random.Random`` to one example dict in the EcomInstruct
format (``sentences`` plus ``labels`` for CLS or ``spans`` with character offsets, end
exclusive, for the other types). ``make_sample.TASKS`` binds them to task folders. Pure
Python; the content is synthetic (templates over small word pools), not copied data.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence


# ----------------------------------------------------------------------------- word pools
def _words(text: str) -> list[str]:
    return text.split()


BRANDS_EN = _words(
    "Acme Northwind Bluepeak Lumina Verdant Kestrel Orbitex Pinecrest Nimbus Solace Harbor Zephyr"
)
COLORS_EN = ["red", "blue", "black", "white", "green", "grey", "navy", "beige", "pink", "yellow"]
MATERIALS_EN = _words("cotton leather wool linen polyester silk denim bamboo steel ceramic")
STYLES_EN = ["casual", "classic", "vintage", "sporty", "minimalist", "elegant"]
SIZES_EN = ["S", "M", "L", "XL", "XXL"]
SEASONS_EN = ["spring", "summer", "autumn", "winter"]
CATEGORIES_EN = {
    "Clothing": ["T-shirt", "hoodie", "dress", "jacket", "jeans", "scarf"],
    "Shoes": ["sneakers", "boots", "sandals", "loafers"],
    "Electronics": ["headphones", "phone case", "charger", "smartwatch", "keyboard", "mouse"],
    "Home": ["mug", "pillow", "blanket", "lamp", "curtain", "towel"],
    "Beauty": ["lipstick", "face cream", "shampoo", "perfume"],
    "Sports": ["yoga mat", "water bottle", "backpack", "tennis racket"],
}
PRODUCTS_EN = [p for ps in CATEGORIES_EN.values() for p in ps]

BRANDS_ZH = [
    "青禾",
    "云杉",
    "北辰",
    "暖阳",
    "星河",
    "木槿",
    "白鹭",
    "松果",
    "蓝鲸",
    "初夏",
    "锦程",
    "山岚",
]
COLORS_ZH = ["红色", "黑色", "白色", "蓝色", "灰色", "粉色", "绿色", "米色", "卡其色", "藏青色"]
MATERIALS_ZH = ["纯棉", "真丝", "羊毛", "亚麻", "牛皮", "涤纶", "牛仔", "竹纤维", "不锈钢", "陶瓷"]
STYLES_ZH = ["韩版", "复古", "简约", "休闲", "法式", "通勤", "运动风"]
SEASONS_ZH = ["春季", "夏季", "秋季", "冬季"]
COLLARS_ZH = ["圆领", "V领", "翻领", "立领", "方领"]
SLEEVES_ZH = ["长袖", "短袖", "七分袖", "无袖"]
PATTERNS_ZH = ["纯色", "条纹", "格纹", "碎花", "拼接", "印花"]
CATEGORIES_ZH = {
    "服饰": ["连衣裙", "T恤", "卫衣", "衬衫", "牛仔裤", "外套"],
    "鞋靴": ["运动鞋", "马丁靴", "凉鞋", "帆布鞋"],
    "数码": ["耳机", "手机壳", "充电器", "智能手表", "键盘", "鼠标"],
    "家居": ["马克杯", "抱枕", "毛毯", "台灯", "窗帘", "毛巾"],
    "美妆": ["口红", "面霜", "洗发水", "香水"],
    "运动": ["瑜伽垫", "水杯", "双肩包", "羽毛球拍"],
}
PRODUCTS_ZH = [p for ps in CATEGORIES_ZH.values() for p in ps]
CLOTHES_ZH = ["连衣裙", "T恤", "卫衣", "衬衫", "外套", "针织衫"]

Example = dict
Gen = Callable[[random.Random], Example]


def _spans(sentence: str, items: Sequence[tuple[str, str | None]]) -> list[dict]:
    """Character spans (end exclusive) of `items` = [(term, type)], searched left to right."""
    spans, pos = [], 0
    for term, kind in items:
        start = sentence.index(term, pos)
        pos = start + len(term)
        span = {"start": start, "end": pos, "term": term}
        if kind is not None:
            span["type"] = kind
        spans.append(span)
    return spans


def _pick(rng: random.Random, pool: Sequence[str], p: float = 1.0) -> str | None:
    """A random element of `pool`, or None with probability 1 - p (optional attributes)."""
    return rng.choice(pool) if rng.random() < p else None


# ----------------------------------------------------------------------------- held-in, EN
_SENT_EN = {
    "positive": [
        "I love this {p}, the {m} feels great.",
        "Great {p} from {b}, fast shipping!",
        "The {c} {p} looks exactly like the photos.",
        "Excellent quality, I would buy this {p} again.",
    ],
    "negative": [
        "The {p} broke after two days.",
        "Terrible {m}, the {p} smells bad.",
        "The {c} color faded after one wash, very disappointed.",
        "{b} sent the wrong size and refused a refund.",
    ],
    "neutral": [
        "The {p} arrived on Tuesday.",
        "It is a {c} {p}, nothing special.",
        "The {p} is okay for the price.",
        "Average {m} quality, works as described.",
    ],
}
_OPENERS_EN = [
    "",
    "",
    "Bought this for my sister. ",
    "Second order from this shop. ",
    "Ordered the {c} one. ",
    "Gift for a friend. ",
]


def en_review_sentiment(rng: random.Random) -> Example:
    label = rng.choice(sorted(_SENT_EN))
    fill = dict(
        p=rng.choice(PRODUCTS_EN),
        m=rng.choice(MATERIALS_EN),
        b=rng.choice(BRANDS_EN),
        c=rng.choice(COLORS_EN),
    )
    text = rng.choice(_OPENERS_EN) + rng.choice(_SENT_EN[label])
    return {"sentences": text.format(**fill), "labels": {"en": [label]}}


def en_product_category(rng: random.Random) -> Example:
    cat = rng.choice(sorted(CATEGORIES_EN))
    parts = [
        rng.choice(BRANDS_EN),
        _pick(rng, STYLES_EN, 0.5),
        _pick(rng, COLORS_EN, 0.7),
        _pick(rng, MATERIALS_EN, 0.5),
        rng.choice(CATEGORIES_EN[cat]),
    ]
    title = " ".join(x for x in parts if x)
    tail = rng.choice(["", "", f", Size {rng.choice(SIZES_EN)}", f", {rng.randint(2, 5)}-pack"])
    return {"sentences": title + tail, "labels": {"en": [cat]}}


def en_product_ner(rng: random.Random) -> Example:
    b, c = rng.choice(BRANDS_EN), _pick(rng, COLORS_EN, 0.8)
    m, p = _pick(rng, MATERIALS_EN, 0.6), rng.choice(PRODUCTS_EN)
    items = [(b, "Brand"), (c, "Color"), (m, "Material"), (p, "Product")]
    if rng.random() < 0.4:  # "<color> <material> <product> by <brand>" word order
        items = items[1:] + items[:1]
    items = [(t, k) for t, k in items if t]
    words = [t for t, _ in items]
    if items[-1][1] == "Brand":
        words[-1] = "by " + words[-1]
    text = " ".join(words) + rng.choice(["", " for women", " for men", " for kids", " (new)"])
    return {"sentences": text, "spans": _spans(text, items)}


_QA_EN = [
    ("What material is the {p} made of?", "m"),
    ("Which brand makes this {p}?", "b"),
    ("What color is the {p}?", "c"),
    ("Which season is the {p} designed for?", "s"),
]
_CTX_EN = [
    "This {c} {p} from {b} is made of {m} and designed for {s}.",
    "Designed for {s}, the {b} {p} uses {m} in a {c} finish.",
    "{b} makes this {p} from {m}; it comes in {c} and suits {s}.",
]


def en_qa_extract(rng: random.Random) -> Example:
    fill = dict(
        p=rng.choice(PRODUCTS_EN),
        m=rng.choice(MATERIALS_EN),
        b=rng.choice(BRANDS_EN),
        c=rng.choice(COLORS_EN),
        s=rng.choice(SEASONS_EN),
    )
    question, key = rng.choice(_QA_EN)
    text = f"Question: {question}\nContext: {rng.choice(_CTX_EN)}".format(**fill)
    answer = fill[key]
    start = text.index(answer, text.index("\nContext: "))
    return {
        "sentences": text,
        "spans": [{"start": start, "end": start + len(answer), "term": answer}],
    }


def en_attribute_detection(rng: random.Random) -> Example:
    b, c, m, p = (
        rng.choice(BRANDS_EN),
        rng.choice(COLORS_EN),
        rng.choice(MATERIALS_EN),
        rng.choice(PRODUCTS_EN),
    )
    form = rng.randrange(3)
    if form == 0:
        text, items = (
            f"Made of soft {m}, this {c} {p} by {b} is perfect for daily use.",
            [(m, "Material"), (c, "Color"), (p, "Product"), (b, "Brand")],
        )
    elif form == 1:
        text, items = (
            f"The new {b} {p} now comes in {c}.",
            [(b, "Brand"), (p, "Product"), (c, "Color")],
        )
    else:
        text, items = (
            f"Looking for a {m} {p} that will not fade after washing.",
            [(m, "Material"), (p, "Product")],
        )
    return {"sentences": text, "spans": _spans(text, items)}


def en_title_generate(rng: random.Random) -> Example:
    attrs = [
        ("Brand", rng.choice(BRANDS_EN)),
        ("Color", rng.choice(COLORS_EN)),
        ("Material", rng.choice(MATERIALS_EN)),
        ("Product", rng.choice(PRODUCTS_EN)),
        ("Size", rng.choice(SIZES_EN)),
    ]
    v = dict(attrs)
    title = f"{v['Brand']} {v['Color']} {v['Material']} {v['Product']}, Size {v['Size']}"
    rng.shuffle(attrs)
    text = "; ".join(f"{k}: {val}" for k, val in attrs)
    return {"sentences": text, "spans": [{"term": title, "start": 0, "end": 0}]}


# ----------------------------------------------------------------------------- held-in, ZH
_SENT_ZH = {
    "正面": [
        "这款{p}质量很好，{m}摸起来很舒服！",
        "{b}的{p}物流很快，非常满意。",
        "{c}{p}和图片一模一样，好评！",
        "第二次回购了，{p}真的不错。",
    ],
    "负面": [
        "{p}用了两天就坏了，太差了。",
        "{m}有异味，{p}做工很粗糙。",
        "洗了一次就掉色，{c}变成了灰白色，失望。",
        "客服态度差，{b}发错了尺码还不给退。",
    ],
    "中性": [
        "{p}周二收到了，还没用。",
        "就是普通的{c}{p}，没什么特别。",
        "这个价格的{p}，一般般吧。",
        "{m}质量中规中矩，和描述一致。",
    ],
}
_ZH_TO_EN_SENT = {"正面": "positive", "负面": "negative", "中性": "neutral"}
_OPENERS_ZH = ["", "", "给妹妹买的。", "在这家店第二次下单了。", "买的是{c}款。", "送朋友的礼物。"]


def zh_review_sentiment(rng: random.Random) -> Example:
    label = rng.choice(sorted(_SENT_ZH))
    fill = dict(
        p=rng.choice(PRODUCTS_ZH),
        m=rng.choice(MATERIALS_ZH),
        b=rng.choice(BRANDS_ZH),
        c=rng.choice(COLORS_ZH),
    )
    text = (rng.choice(_OPENERS_ZH) + rng.choice(_SENT_ZH[label])).format(**fill)
    return {"sentences": text, "labels": {"en": [_ZH_TO_EN_SENT[label]], "zh": [label]}}


def zh_product_category(rng: random.Random) -> Example:
    cat = rng.choice(sorted(CATEGORIES_ZH))
    parts = [
        rng.choice(BRANDS_ZH),
        f"{rng.randint(2019, 2023)}新款" if rng.random() < 0.5 else "",
        _pick(rng, STYLES_ZH, 0.5),
        _pick(rng, COLORS_ZH, 0.7),
        _pick(rng, MATERIALS_ZH, 0.5),
        rng.choice(CATEGORIES_ZH[cat]),
    ]
    title = "".join(x for x in parts if x) + rng.choice(["", "", " 包邮", " 官方旗舰店"])
    return {"sentences": title, "labels": {"zh": [cat]}}


def zh_attribute_ner(rng: random.Random) -> Example:
    items = [
        (rng.choice(BRANDS_ZH), "品牌"),
        (_pick(rng, STYLES_ZH, 0.6), "风格"),
        (_pick(rng, COLORS_ZH, 0.8), "颜色"),
        (_pick(rng, MATERIALS_ZH, 0.6), "材质"),
        (rng.choice(PRODUCTS_ZH), "商品"),
    ]
    items = [(t, k) for t, k in items if t]
    text = "".join(t for t, _ in items) + rng.choice(["", "女", "男士", "2件装", "（新品）"])
    return {"sentences": text, "spans": _spans(text, items)}


_QA_ZH = [
    ("这款{p}是什么材质的？", "m"),
    ("这款{p}是哪个品牌的？", "b"),
    ("这款{p}是什么颜色？", "c"),
]
_CTX_ZH = ["{b}{c}{p}，采用{m}材质，{s}设计。", "这款{s}风格的{p}由{b}出品，{m}面料，{c}。"]


def zh_qa_extract(rng: random.Random) -> Example:
    fill = dict(
        p=rng.choice(PRODUCTS_ZH),
        m=rng.choice(MATERIALS_ZH),
        b=rng.choice(BRANDS_ZH),
        c=rng.choice(COLORS_ZH),
        s=rng.choice(STYLES_ZH),
    )
    question, key = rng.choice(_QA_ZH)
    text = f"问题：{question}\n描述：{rng.choice(_CTX_ZH)}".format(**fill)
    answer = fill[key]
    start = text.index(answer, text.index("\n描述："))
    return {
        "sentences": text,
        "spans": [{"start": start, "end": start + len(answer), "term": answer}],
    }


def zh_attribute_detection(rng: random.Random) -> Example:
    items = [
        (_pick(rng, SEASONS_ZH, 0.7), "适用季节"),
        (_pick(rng, STYLES_ZH, 0.7), "风格"),
        (_pick(rng, COLORS_ZH, 0.8), "颜色"),
        (_pick(rng, MATERIALS_ZH, 0.7), "材质"),
    ]
    items = [(t, k) for t, k in items if t] or [(rng.choice(COLORS_ZH), "颜色")]
    head = "新款" if items[0][1] == "适用季节" else ""
    words = [t + head if i == 0 else t for i, (t, _) in enumerate(items)]
    text = "".join(words) + rng.choice(CLOTHES_ZH) + rng.choice(["", "，百搭显瘦", "，舒适透气"])
    return {"sentences": text, "spans": _spans(text, items)}


def zh_description_generate(rng: random.Random) -> Example:
    v = {
        "品牌": rng.choice(BRANDS_ZH),
        "颜色": rng.choice(COLORS_ZH),
        "材质": rng.choice(MATERIALS_ZH),
        "品类": rng.choice(PRODUCTS_ZH),
        "风格": rng.choice(STYLES_ZH),
    }
    keys = list(v)
    rng.shuffle(keys)
    text = "；".join(f"{k}：{v[k]}" for k in keys)
    desc = f"{v['品牌']}出品的{v['风格']}{v['颜色']}{v['品类']}，选用{v['材质']}，日常百搭。"
    return {"sentences": text, "spans": [{"term": desc, "start": 0, "end": 0}]}


# ----------------------------------------------------------------------------- held-out stand-ins
_ABSA = {
    "Food": ["The {dish} was {tasty}.", "Their {dish} is the best in town."],
    "Service": ["Our waiter was {kind} and quick.", "The staff ignored us for twenty minutes."],
    "Price": ["Prices are {fair} for the portion size.", "A bit expensive for a {dish}."],
    "Ambience": ["The dining room is {cozy}.", "Music was far too loud to talk."],
    "Anecdotes/Miscellaneous": ["We came here for {event}.", "I have been coming here for years."],
}
_ABSA_FILL = dict(
    dish=["pasta", "sushi", "burger", "soup", "pizza", "salad", "steak"],
    tasty=["delicious", "bland", "perfectly cooked", "cold", "amazing"],
    kind=["friendly", "rude", "attentive", "patient"],
    fair=["fair", "reasonable", "high"],
    cozy=["cozy", "cramped", "bright and clean", "noisy"],
    event=["a birthday", "lunch", "our anniversary", "a business dinner"],
)


def absa_topic(rng: random.Random) -> Example:
    labels = rng.sample(sorted(_ABSA), rng.choice([1, 1, 1, 2]))
    fill = {k: rng.choice(v) for k, v in _ABSA_FILL.items()}
    text = " ".join(rng.choice(_ABSA[lab]).format(**fill) for lab in labels)
    return {"sentences": text, "labels": {"default": labels}}


_LAPTOP = dict(
    brand=["Veltra", "Korin", "Aster", "Quanta"],
    product=["Aero 15 laptop", "Nova X2 tablet", "Edge 13 notebook", "Flex 360 laptop"],
    attribute=["16 GB", "backlit", "fast", "anti-glare", "long-lasting"],
    component=["keyboard", "SSD", "battery", "display", "webcam"],
)


def lenovo_condition_extract(rng: random.Random) -> Example:
    v = {k: rng.choice(pool) for k, pool in _LAPTOP.items()}
    form = rng.randrange(3)
    if form == 0:
        text = (
            f"The new {v['brand']} {v['product']} comes with a {v['attribute']} {v['component']} ."
        )
        items = [
            (v["brand"], "Brand"),
            (v["product"], "Product"),
            (v["attribute"], "Attribute"),
            (v["component"], "Component"),
        ]
    elif form == 1:
        text = f"Upgrade your {v['component']} and enjoy the {v['product']} for longer ."
        items = [(v["component"], "Component"), (v["product"], "Product")]
    else:
        text = f"{v['brand']} designs every laptop to help you work anywhere ."
        items = [(v["brand"], "Brand")]
    return {"sentences": text, "spans": _spans(text, items)}


def mepave_ner(rng: random.Random) -> Example:
    items = [
        (_pick(rng, COLLARS_ZH, 0.6), "领型"),
        (_pick(rng, SLEEVES_ZH, 0.5), "袖长"),
        (_pick(rng, COLORS_ZH, 0.5), "颜色"),
        (_pick(rng, PATTERNS_ZH, 0.5), "图案"),
        (_pick(rng, STYLES_ZH, 0.5), "风格"),
    ]
    items = [(t, k) for t, k in items if t]
    prefix = rng.choice(["HC", "ZW", "MQ", "LY", ""])
    text = prefix + "".join(t for t, _ in items) + rng.choice(CLOTHES_ZH)
    return {"sentences": text, "spans": _spans(text, items)}


def openbg_title_generate(rng: random.Random) -> Example:
    v = dict(
        品牌=rng.choice(BRANDS_ZH),
        颜色分类=rng.choice(COLORS_ZH),
        材质=rng.choice(MATERIALS_ZH),
        风格=rng.choice(STYLES_ZH),
        适用季节=rng.choice(SEASONS_ZH),
        品类=rng.choice(CLOTHES_ZH),
    )
    year = rng.randint(2019, 2023)
    keys = list(v)
    rng.shuffle(keys)
    text = "#;#".join(f"{k}#:#{v[k]}" for k in keys) + f"#;#上市年份季节#:#{year}年{v['适用季节']}"
    title = f"{v['品牌']}{year}{v['适用季节']}新款{v['风格']}{v['颜色分类']}{v['材质']}{v['品类']}"
    return {"sentences": text, "label_set": [""], "spans": [{"term": title, "start": 0, "end": 0}]}


def multi_cpr_select(rng: random.Random) -> Example:
    products = rng.sample(PRODUCTS_ZH, 4)
    docs = [
        f"{rng.choice(BRANDS_ZH)} {rng.choice(STYLES_ZH)}{rng.choice(COLORS_ZH)}{p}"
        for p in products
    ]
    target = rng.randrange(4)
    text = f"Query: {products[target]}\nCandidate Document: " + ", ".join(docs) + "."
    start = text.index(docs[target])
    return {
        "label_set": [""],
        "sentences": text,
        "spans": [{"term": docs[target], "start": start, "end": start + len(docs[target])}],
    }


_COARSE = {
    "服饰": "大服饰",
    "鞋靴": "大服饰",
    "数码": "消费电子",
    "家居": "大百货",
    "美妆": "美妆洗护",
    "运动": "大百货",
    "食品": "食品",
}
_FOOD_ZH = ["坚果礼盒", "挂耳咖啡", "自热米饭", "牛肉干"]


def openbg_coarse_classify(rng: random.Random) -> Example:
    cat = rng.choice(sorted(_COARSE))
    product = rng.choice(_FOOD_ZH if cat == "食品" else CATEGORIES_ZH[cat])
    brand = rng.choice(BRANDS_ZH)
    title = f"{brand}{rng.choice(STYLES_ZH) if cat != '食品' else '办公室'}{product}"
    attrs = f"品牌#:#{brand}#;#产地#:#{rng.choice(['中国大陆', '浙江', '广东'])}"
    return {
        "sentences": f"{title}\t{attrs}",
        "labels": {"coarse": [_COARSE[cat]], "fine": [product]},
    }
