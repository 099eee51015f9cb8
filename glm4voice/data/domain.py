"""The tiny bilingual domain: spoken questions, short answers, facts and story pairs, English and Mandarin.

    glm4voice data tiny-texts --out texts.jsonl      # then: glm4voice data speak --texts texts.jsonl --out ...

The embedded default model is trained on this domain, so it has to be small enough for a tiny model and rich
enough that passing its held-out test means something was learned rather than memorised:

- Tasks: sums and differences of 0..10 and products of 0..5, capitals (40 countries), the day after / before a
  weekday, the month after a month, opposites (36 adjectives), colours of 25 things, legs of 26 animals,
  greetings, "who are you", and "say ... slowly / quickly" (the speech-rate instruction: the answer row carries
  the rate its speech is made at). Every question has four phrasings (greetings and requests: several variants).
- Held-out split: for every task a fixed share of the contents (number pairs, countries, adjectives, things,
  animals, phrases) and one phrasing per question type are held out. A test item has a held-out content or a
  held-out phrasing, so no (question, answer) pair of the test appears in training. The facts behind the
  held-out contents ("The capital of Peru is Lima.") are training rows of their own (role `fact`): a model
  passes the test on capitals by using what it read, in a question form it never saw for that country. Each
  fact comes in three more phrasings (`phrasing` 1-3, `FACT_PHRASINGS`): text to read, not to speak.
- Answers are written as the chat speaks them: whole short sentences, numbers in words, no digits or symbols.
  Each distinct answer is one row (role `answer`) in the fixed assistant voice, so the SFT targets and the
  assistant's recordings line up; question rows point to it (`answer_id`).
- Story pairs (role `story`, StoryCloze-style): a short story with its right and its wrong ending, two rows
  sharing a `pair` id.

Every row is a text-manifest row that `data speak` reads (`id`, `text`, `lang`, optional `voice`/`rate`) plus
`role`, `task`, `split` and the task's fields. The output is the same bytes on every run.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

from .manifest import Utterance, write_manifest

# the assistant: one fixed voice per language, a natural-sounding English one (flite's slt, which pocketsphinx
# hears: 17 % WER where espeak-ng's en-us+f3 gives 73 %) and espeak-ng's Mandarin, the only Mandarin one here
ASSISTANT = {"en": "flite:slt", "zh": "espeak-ng:cmn-latn-pinyin+f3"}
SLOW, FAST = 0.7, 1.4
HELD_OUT = 0.2  # share of each task's contents kept for the test

_EN_NUM = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
           "sixteen seventeen eighteen nineteen twenty").split()  # fmt: skip
_ZH_DIGIT = "零一二三四五六七八九"


def en_number(n: int) -> str:
    return _EN_NUM[n] if n <= 20 else "twenty" + (f"-{_EN_NUM[n - 20]}" if n % 10 else "")


def zh_number(n: int) -> str:
    """0..99 as a Mandarin reader says it (十一, 二十五)."""
    if n < 10:
        return _ZH_DIGIT[n]
    tens, ones = divmod(n, 10)
    return ("" if tens == 1 else _ZH_DIGIT[tens]) + "十" + (_ZH_DIGIT[ones] if ones else "")


def _table(text: str) -> list[list[str]]:
    return [line.split("|") for line in text.strip().splitlines()]


COUNTRIES = _table("""
France|法国|Paris|巴黎
Germany|德国|Berlin|柏林
Italy|意大利|Rome|罗马
Spain|西班牙|Madrid|马德里
Portugal|葡萄牙|Lisbon|里斯本
Britain|英国|London|伦敦
Japan|日本|Tokyo|东京
China|中国|Beijing|北京
Russia|俄罗斯|Moscow|莫斯科
Egypt|埃及|Cairo|开罗
Kenya|肯尼亚|Nairobi|内罗毕
Canada|加拿大|Ottawa|渥太华
Mexico|墨西哥|Mexico City|墨西哥城
Brazil|巴西|Brasilia|巴西利亚
Argentina|阿根廷|Buenos Aires|布宜诺斯艾利斯
Peru|秘鲁|Lima|利马
Chile|智利|Santiago|圣地亚哥
Australia|澳大利亚|Canberra|堪培拉
India|印度|New Delhi|新德里
Thailand|泰国|Bangkok|曼谷
Vietnam|越南|Hanoi|河内
South Korea|韩国|Seoul|首尔
Greece|希腊|Athens|雅典
Norway|挪威|Oslo|奥斯陆
Sweden|瑞典|Stockholm|斯德哥尔摩
Finland|芬兰|Helsinki|赫尔辛基
Denmark|丹麦|Copenhagen|哥本哈根
Poland|波兰|Warsaw|华沙
Austria|奥地利|Vienna|维也纳
Ireland|爱尔兰|Dublin|都柏林
Turkey|土耳其|Ankara|安卡拉
Iran|伊朗|Tehran|德黑兰
Indonesia|印度尼西亚|Jakarta|雅加达
Cuba|古巴|Havana|哈瓦那
Hungary|匈牙利|Budapest|布达佩斯
the Netherlands|荷兰|Amsterdam|阿姆斯特丹
Belgium|比利时|Brussels|布鲁塞尔
Switzerland|瑞士|Bern|伯尔尼
Nigeria|尼日利亚|Abuja|阿布贾
Mongolia|蒙古|Ulaanbaatar|乌兰巴托
""")
OPPOSITES = _table("""
hot|热|cold|冷
big|大|small|小
tall|高|short|矮
fast|快|slow|慢
happy|高兴|sad|难过
bright|亮|dark|暗
heavy|重|light|轻
young|年轻|old|年老
new|新|old|旧
full|满|empty|空
wet|湿|dry|干
hard|硬|soft|软
rich|富|poor|穷
strong|强|weak|弱
early|早|late|晚
clean|干净|dirty|脏
good|好|bad|坏
long|长|short|短
thick|厚|thin|薄
wide|宽|narrow|窄
near|近|far|远
sweet|甜|bitter|苦
easy|容易|difficult|困难
cheap|便宜|expensive|贵
safe|安全|dangerous|危险
beautiful|美丽|ugly|丑陋
true|真|false|假
sharp|锋利|blunt|钝
warm|温暖|cool|凉爽
loud|响亮|quiet|安静
brave|勇敢|cowardly|胆小
polite|礼貌|rude|粗鲁
smooth|光滑|rough|粗糙
deep|深|shallow|浅
fat|胖|thin|瘦
alive|活|dead|死
""")
COLOURS = _table("""
grass|草|green|绿色
the sky|天空|blue|蓝色
snow|雪|white|白色
coal|煤|black|黑色
a banana|香蕉|yellow|黄色
a tomato|西红柿|red|红色
milk|牛奶|white|白色
blood|血|red|红色
a lemon|柠檬|yellow|黄色
a carrot|胡萝卜|orange|橙色
a strawberry|草莓|red|红色
chocolate|巧克力|brown|棕色
an elephant|大象|grey|灰色
a crow|乌鸦|black|黑色
the sea|大海|blue|蓝色
a leaf|树叶|green|绿色
a cherry|樱桃|red|红色
a pumpkin|南瓜|orange|橙色
an eggplant|茄子|purple|紫色
a flamingo|火烈鸟|pink|粉色
a polar bear|北极熊|white|白色
coffee|咖啡|brown|棕色
a frog|青蛙|green|绿色
a mouse|老鼠|grey|灰色
an orange|橙子|orange|橙色
""")
LEGS = _table("""
a dog|狗|4
a cat|猫|4
a horse|马|4
a cow|牛|4
a chicken|鸡|2
a duck|鸭子|2
a bird|鸟|2
a spider|蜘蛛|8
an ant|蚂蚁|6
a bee|蜜蜂|6
a snake|蛇|0
a fish|鱼|0
a person|人|2
a frog|青蛙|4
a lion|狮子|4
a goat|山羊|4
a pig|猪|4
a sheep|绵羊|4
a butterfly|蝴蝶|6
a kangaroo|袋鼠|2
an ostrich|鸵鸟|2
a penguin|企鹅|2
a beetle|甲虫|6
a worm|蚯蚓|0
a mouse|老鼠|4
a rabbit|兔子|4
""")
WEEKDAYS = _table("""
Monday|星期一
Tuesday|星期二
Wednesday|星期三
Thursday|星期四
Friday|星期五
Saturday|星期六
Sunday|星期日
""")
MONTHS = [[m, f"{zh_number(i + 1)}月"] for i, m in enumerate(
    "January February March April May June July August September October November December".split())]
PHRASES = _table("""
good night|晚安
see you tomorrow|明天见
I like apples|我喜欢苹果
the cat is sleeping|小猫在睡觉
it is raining today|今天下雨了
thank you very much|非常感谢
open the door|请把门打开
let us go home|我们回家吧
the sun is bright|太阳很亮
I can count to ten|我会数到十
welcome to the party|欢迎来到聚会
drink some water|喝点水吧
read a book|读一本书
happy birthday|生日快乐
close the window|请关上窗户
the bus is late|公交车晚点了
""")

# Phrasings per question type and language; the LAST one of each list is held out for the test.
PHRASINGS = {
    "add": (["What is {a} plus {b}?", "How much is {a} plus {b}?", "Add {a} and {b}.",
             "Can you tell me what {a} plus {b} makes?"],
            ["{a}加{b}等于几？", "{a}加{b}是多少？", "请算一下{a}加{b}。", "{a}和{b}加起来是多少？"]),
    "subtract": (["What is {a} minus {b}?", "How much is {a} minus {b}?", "Take {b} away from {a}.",
                  "What do you get if you subtract {b} from {a}?"],
                 ["{a}减{b}等于几？", "{a}减{b}是多少？", "请算一下{a}减{b}。", "从{a}里减去{b}还剩多少？"]),
    "multiply": (["What is {a} times {b}?", "How much is {a} times {b}?", "Multiply {a} by {b}.",
                  "What do you get when you multiply {a} and {b}?"],
                 ["{a}乘{b}等于几？", "{a}乘以{b}是多少？", "请算一下{a}乘{b}。", "{a}和{b}相乘是多少？"]),
    "capital": (["What is the capital of {x}?", "Which city is the capital of {x}?", "Tell me the capital of {x}.",
                 "Name the capital city of {x}."],
                ["{x}的首都是哪里？", "{x}的首都是哪个城市？", "告诉我{x}的首都。", "请问{x}的首都在哪里？"]),
    "day_after": (["What day comes after {x}?", "What is the day after {x}?", "Which day follows {x}?",
                   "If today is {x}, what day is tomorrow?"],
                  ["{x}的后一天是星期几？", "{x}之后是星期几？", "{x}的下一天是星期几？",
                   "如果今天是{x}，明天是星期几？"]),
    "day_before": (["What day comes before {x}?", "What is the day before {x}?", "Which day is just before {x}?",
                    "If today is {x}, what day was yesterday?"],
                   ["{x}的前一天是星期几？", "{x}之前是星期几？", "{x}的上一天是星期几？",
                    "如果今天是{x}，昨天是星期几？"]),
    "month": (["What month comes after {x}?", "What is the month after {x}?", "Which month follows {x}?",
               "When {x} ends, which month begins?"],
              ["{x}的下一个月是几月？", "{x}之后是几月？", "{x}过后是哪个月？", "{x}结束以后是几月？"]),
    "opposite": (["What is the opposite of {x}?", "What's the opposite of {x}?", "Tell me the opposite of {x}.",
                  "Give me a word that means the opposite of {x}."],
                 ["{x}的反义词是什么？", "{x}的反义词是哪个词？", "告诉我{x}的反义词。", "和{x}意思相反的词是什么？"]),
    "colour": (["What colour is {x}?", "Which colour is {x}?", "Tell me the colour of {x}.",
                "Do you know what colour {x} is?"],
               ["{x}是什么颜色的？", "{x}是什么颜色？", "告诉我{x}的颜色。", "你知道{x}是什么颜色吗？"]),
    "legs": (["How many legs does {x} have?", "How many legs has {x} got?", "Count the legs of {x}.",
              "Can you tell me how many legs {x} has?"],
             ["{x}有几条腿？", "{x}有多少条腿？", "数一数{x}有几条腿。", "你知道{x}有几条腿吗？"]),
    "say": (["Say {x}.", "Please say {x}.", "Repeat after me: {x}."],
            ["请说{x}。", "说一遍{x}。", "跟我说：{x}。"]),
    "say_slowly": (["Say {x} slowly.", "Please say {x} slowly.", "Can you say {x} very slowly?"],
                   ["请慢慢地说{x}。", "慢一点说{x}。", "请用很慢的速度说{x}。"]),
    "say_quickly": (["Say {x} quickly.", "Please say {x} fast.", "Can you say {x} very quickly?"],
                    ["请快快地说{x}。", "快一点说{x}。", "请用很快的速度说{x}。"]),
}  # fmt: skip

# More ways to state each fact (the answer sentence is the first): {x} the question's content, {y} the answer's key,
# {X}/{Y} capitalised. Text only, never spoken: what the LMs read. A fact read in one sentence form is hard to
# recall from a question (Allen-Zhu & Li, "Physics of Language Models 3.1": knowledge augmentation); none of these
# is a held-out question phrasing turned into a statement.
FACT_PHRASINGS = {
    "capital": (["{Y} is the capital of {x}.", "In {x}, the capital is {y}.", "{X} has {y} as its capital."],
                ["{y}是{x}的首都。", "{x}的首都叫{y}。", "{x}的首都城市是{y}。"]),
    "day_after": (["{Y} comes after {x}.", "After {x} comes {y}.", "{X} is followed by {y}."],
                  ["{x}之后是{y}。", "过了{x}就是{y}。", "{y}在{x}的后面。"]),
    "day_before": (["{Y} comes before {x}.", "Before {x} comes {y}.", "{X} follows {y}."],
                   ["{x}之前是{y}。", "{y}过后就是{x}。", "{y}在{x}的前面。"]),
    "month": (["{Y} comes after {x}.", "After {x} comes {y}.", "{X} is followed by {y}."],
              ["{x}之后是{y}。", "{x}过后是{y}。", "{y}在{x}的后面。"]),
    "opposite": (["{Y} is the opposite of {x}.", "{X} and {y} are opposites.", "The antonym of {x} is {y}."],
                 ["{y}是{x}的反义词。", "{x}和{y}是一对反义词。", "{x}的反义词叫{y}。"]),
    "colour": (["The colour of {x} is {y}.", "{Y} is the colour of {x}.", "{X} is {y} in colour."],
               ["{x}的颜色是{y}。", "{y}是{x}的颜色。", "{x}看起来是{y}的。"]),
    "legs": (["{X} has got {y}.", "{X} stands on {y}.", "The number of legs of {x} is {n}."],
             ["{x}一共有{y}条腿。", "{x}长着{y}条腿。", "{x}的腿一共有{y}条。"]),
}  # fmt: skip
NO_LEGS = (["{X} has no legs at all.", "{X} has not got any legs.", "{X} moves without legs."],
           ["{x}一条腿也没有。", "{x}身上没有腿。", "{x}根本没有腿。"])  # legs, for the animals with none


def fact_phrasings(task: str, lang: str, x: str, y: str) -> list[str]:
    """The facts of one content beyond its answer sentence: `x` the question's content, `y` the answer's key."""
    if task not in FACT_PHRASINGS:
        return []
    templates = FACT_PHRASINGS[task][0 if lang == "en" else 1]
    if task == "legs" and y in ("no legs", "没有"):
        templates = NO_LEGS[0 if lang == "en" else 1]
    n = y.split()[0] if lang == "en" else y
    return [_cap(t.format(x=x, y=y, X=_cap(x), Y=_cap(y), n=n)) for t in templates]


# Greetings and "who are you": (kind, English variants, English answer, Mandarin variants, Mandarin answer).
CHAT = [
    ("hello", ["Hello!", "Hi!", "Hey there.", "Hello, assistant."], "Hello! How can I help you?",
     ["你好！", "嗨！", "你好呀。", "你好，助手。"], "你好！有什么可以帮你的吗？"),
    ("morning", ["Good morning.", "Morning!", "Good morning to you."], "Good morning! How can I help you?",
     ["早上好。", "早安！", "祝你早上好。"], "早上好！有什么可以帮你的吗？"),
    ("evening", ["Good evening.", "Evening!", "Good evening to you."], "Good evening! How can I help you?",
     ["晚上好。", "晚上好呀！", "祝你晚上好。"], "晚上好！有什么可以帮你的吗？"),
    ("how_are_you", ["How are you?", "How are you doing?", "How is it going?"],
     "I am fine, thank you. How can I help you?",
     ["你好吗？", "你最近怎么样？", "你过得好吗？"], "我很好，谢谢。有什么可以帮你的吗？"),
    ("thanks", ["Thank you.", "Thanks a lot.", "Thank you so much."], "You are welcome.",
     ["谢谢你。", "多谢。", "太感谢你了。"], "不客气。"),
    ("bye", ["Goodbye.", "Bye!", "See you later."], "Goodbye! Have a nice day.",
     ["再见。", "拜拜！", "回头见。"], "再见！祝你愉快。"),
    ("identity", ["Who are you?", "What are you?", "What is your name?", "Please introduce yourself."],
     "I am a small voice assistant. I can answer simple questions.",
     ["你是谁？", "你是什么？", "你叫什么名字？", "请介绍一下你自己。"],
     "我是一个小小的语音助手，我能回答简单的问题。"),
]  # fmt: skip

# Story templates: (English story, right, wrong; Mandarin story, right, wrong). {n}: name, {he}/{his}: pronouns.
STORIES = [
    ("{N} wanted to go for a walk. When {he} opened the door, it was raining hard. {He} took {his} umbrella.",
     "{He} walked in the rain and stayed dry.", "{He} came home with a bad sunburn.",
     "{n}想去散步。一开门，外面正下着大雨。{n}拿上了雨伞。", "{n}在雨中散步，身上一点也没湿。",
     "{n}回家时被太阳晒伤了。"),
    ("It was {N}'s birthday. {His} friends came to {his} house with a big cake. They sang a song together.",
     "{N} blew out the candles and smiled.", "{N} was sad because nobody remembered {his} birthday.",
     "今天是{n}的生日。朋友们带着一个大蛋糕来到{n}家。大家一起唱了一首歌。", "{n}吹灭了蜡烛，开心地笑了。",
     "{n}很难过，因为没有人记得{his_zh}生日。"),
    ("{N} could not find {his} keys. {He} looked under the bed and in every drawer. At last {he} found them in "
     "{his} bag.", "{N} was happy to have {his} keys back.", "{N} was sad because the keys were still lost.",
     "{n}找不到钥匙了。{n}找遍了床底下和每一个抽屉。最后，{n}在书包里找到了钥匙。", "{n}很高兴找回了钥匙。",
     "{n}很难过，因为钥匙还是没有找到。"),
    ("{N} had a test at school on Friday. {He} studied hard every evening. On Friday {he} answered every question.",
     "{N} got a very good mark.", "{N} got every question wrong because {he} had not studied.",
     "{n}星期五要考试。{n}每天晚上都认真复习。星期五，{n}回答了所有的题目。", "{n}考了一个很好的成绩。",
     "{n}全部答错了，因为{n}一点也没有复习。"),
    ("It was very cold outside. {N} put on a thick coat and a warm hat. Then {he} went out to play in the snow.",
     "{N} built a big snowman.", "{N} went swimming in the warm sea.",
     "外面非常冷。{n}穿上了厚外套，戴上了暖和的帽子。然后{n}出去在雪地里玩。", "{n}堆了一个大雪人。",
     "{n}在温暖的大海里游泳。"),
    ("{N} ran for an hour in the park. {He} felt very thirsty. {He} bought a bottle of water.",
     "{N} drank it all at once.", "{N} poured it on the ground and felt even more thirsty.",
     "{n}在公园里跑了一个小时。{n}觉得非常渴。{n}买了一瓶水。", "{n}一口气把水喝完了。",
     "{n}把水倒在地上，觉得更渴了。"),
    ("{N} planted a small seed in a pot. {He} watered it every day. After a few weeks a green shoot appeared.",
     "{N} was proud of {his} little plant.", "{N} was surprised that nothing had grown.",
     "{n}在花盆里种了一颗小种子。{n}每天都给它浇水。几个星期后，长出了一棵绿色的小芽。", "{n}为自己的小植物感到骄傲。",
     "{n}很惊讶，因为什么也没有长出来。"),
    ("{N} found a small dog in the street. It looked hungry and lost. {N} gave it some food.",
     "The dog ate the food and followed {N} home.", "The dog was angry and never ate anything again.",
     "{n}在街上发现了一只小狗。它看起来又饿又迷路了。{n}给了它一些吃的。", "小狗吃了东西，跟着{n}回了家。",
     "小狗很生气，从此再也不吃东西了。"),
]  # fmt: skip
NAMES = [("Tom", "m", "小明"), ("Anna", "f", "小红"), ("Jack", "m", "小刚"), ("Lily", "f", "小丽"),
         ("Sam", "m", "小华"), ("Mia", "f", "小芳"), ("Ben", "m", "小军"), ("Lucy", "f", "小美"),
         ("Max", "m", "小强"), ("Emma", "f", "小雪")]


def _held_out(task: str, keys: list) -> set:
    """A fixed share of a task's contents (at least one), the same on every run and for both languages."""
    count = max(1, round(HELD_OUT * len(keys)))
    return set(random.Random(f"glm4voice-tiny-{task}").sample(sorted(keys), count))


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _contents():
    """(task, content key, {lang: (slot values, answer, key)}, answer rate) for every question content; the
    key is what a reply must say to be right (Paris, four legs, 巴黎): the eval's `qa` suite checks it."""
    for task, op, pairs in (("add", "plus", [(a, b) for a in range(11) for b in range(11)]),
                            ("subtract", "minus", [(a, b) for a in range(11) for b in range(a + 1)]),
                            ("multiply", "times", [(a, b) for a in range(6) for b in range(6)])):  # fmt: skip
        zh_op = {"plus": "加", "minus": "减", "times": "乘"}[op]
        for a, b in pairs:
            c = {"plus": a + b, "minus": a - b, "times": a * b}[op]
            yield task, f"{a},{b}", {
                "en": ({"a": en_number(a), "b": en_number(b)},
                       f"{_cap(en_number(a))} {op} {en_number(b)} is {en_number(c)}.", en_number(c)),
                "zh": ({"a": zh_number(a), "b": zh_number(b)},
                       f"{zh_number(a)}{zh_op}{zh_number(b)}等于{zh_number(c)}。", zh_number(c)),
            }, 1.0  # fmt: skip
    for en, zh, city, zh_city in COUNTRIES:
        yield "capital", en, {"en": ({"x": en}, f"The capital of {en} is {city}.", city),
                              "zh": ({"x": zh}, f"{zh}的首都是{zh_city}。", zh_city)}, 1.0  # fmt: skip
    for i, (en, zh) in enumerate(WEEKDAYS):
        (en_a, zh_a), (en_b, zh_b) = WEEKDAYS[(i + 1) % 7], WEEKDAYS[i - 1]
        yield "day_after", en, {"en": ({"x": en}, f"The day after {en} is {en_a}.", en_a),
                                "zh": ({"x": zh}, f"{zh}的后一天是{zh_a}。", zh_a)}, 1.0  # fmt: skip
        yield "day_before", en, {"en": ({"x": en}, f"The day before {en} is {en_b}.", en_b),
                                 "zh": ({"x": zh}, f"{zh}的前一天是{zh_b}。", zh_b)}, 1.0  # fmt: skip
    for i, (en, zh) in enumerate(MONTHS):
        en_n, zh_n = MONTHS[(i + 1) % 12]
        yield "month", en, {"en": ({"x": en}, f"The month after {en} is {en_n}.", en_n),
                            "zh": ({"x": zh}, f"{zh}的下一个月是{zh_n}。", zh_n)}, 1.0  # fmt: skip
    for en, zh, en_o, zh_o in OPPOSITES:
        yield "opposite", en, {"en": ({"x": en}, f"The opposite of {en} is {en_o}.", en_o),
                               "zh": ({"x": zh}, f"{zh}的反义词是{zh_o}。", zh_o)}, 1.0  # fmt: skip
    for en, zh, colour, zh_colour in COLOURS:
        yield "colour", en, {"en": ({"x": en}, f"{_cap(en)} is {colour}.", colour),
                             "zh": ({"x": zh}, f"{zh}是{zh_colour}的。", zh_colour)}, 1.0  # fmt: skip
    for en, zh, legs in LEGS:
        n = int(legs)
        en_answer = f"{_cap(en)} has no legs." if n == 0 else f"{_cap(en)} has {en_number(n)} legs."
        zh_n = "没有" if n == 0 else "两" if n == 2 else zh_number(n)
        zh_answer = f"{zh}没有腿。" if n == 0 else f"{zh}有{zh_n}条腿。"
        en_key = "no legs" if n == 0 else f"{en_number(n)} legs"
        yield "legs", en, {"en": ({"x": en}, en_answer, en_key), "zh": ({"x": zh}, zh_answer, zh_n)}, 1.0
    for task, rate in (("say", 1.0), ("say_slowly", SLOW), ("say_quickly", FAST)):
        for en, zh in PHRASES:
            yield task, en, {"en": ({"x": en}, _cap(en) + ".", en), "zh": ({"x": zh}, zh + "。", zh)}, rate


def tiny_texts(langs: tuple[str, ...] = ("en", "zh")) -> list[Utterance]:
    """Every row of the domain, in a fixed order: questions, answers, facts, stories."""
    questions, answers, facts, stories = [], {}, [], []
    index = Counter()

    def answer_id(lang: str, text: str, rate: float) -> str:
        key = (lang, text, rate)
        if key not in answers:
            index[lang, "answer"] += 1
            answers[key] = Utterance(f"{lang}-answer-{index[lang, 'answer']:05d}", text=text,
                                     lang=lang, extra={"role": "answer", "voice": ASSISTANT[lang], "rate": rate,
                                                       "pitch": 0.0})  # fmt: skip
        return answers[key].id

    def question(lang, task, split, text, answer, rate, key):
        index[lang, task] += 1
        questions.append(Utterance(f"{lang}-{task}-{index[lang, task]:05d}", text=text, lang=lang, extra={
            "role": "question", "task": task, "split": split, "answer": answer, "key": key,
            "answer_id": answer_id(lang, answer, rate), "answer_rate": rate}))  # fmt: skip

    contents = list(_contents())
    held = {task: _held_out(task, [key for t, key, _, _ in contents if t == task]) for task in PHRASINGS}
    for task, key, by_lang, rate in contents:
        for lang in langs:
            slots, answer, answer_key = by_lang[lang]
            phrasings = PHRASINGS[task][0 if lang == "en" else 1]
            for k, phrasing in enumerate(phrasings):
                split = "test" if key in held[task] or k == len(phrasings) - 1 else "train"
                question(lang, task, split, phrasing.format(**slots), answer, rate, answer_key)
            if task not in ("add", "subtract", "multiply", "say", "say_slowly", "say_quickly"):
                index[lang, "fact"] += 1
                fact_id = f"{lang}-fact-{index[lang, 'fact']:05d}"
                facts.append(Utterance(fact_id, text=answer, lang=lang,
                                       extra={"role": "fact", "task": task, "split": "train"}))  # fmt: skip
                for k, text in enumerate(fact_phrasings(task, lang, slots["x"], answer_key), start=1):
                    facts.append(Utterance(f"{fact_id}-{k}", text=text, lang=lang, extra={
                        "role": "fact", "task": task, "split": "train", "phrasing": k}))  # fmt: skip
    for kind, en_variants, en_answer, zh_variants, zh_answer in CHAT:
        task = "identity" if kind == "identity" else "greeting"
        for lang in langs:
            variants, answer = (en_variants, en_answer) if lang == "en" else (zh_variants, zh_answer)
            for k, text in enumerate(variants):
                question(lang, task, "test" if k == len(variants) - 1 else "train", text, answer, 1.0, answer)
    held_stories = _held_out("story", [f"{t}-{n}" for t in range(len(STORIES)) for n in range(len(NAMES))])
    for t, template in enumerate(STORIES):
        for n, (name, gender, zh_name) in enumerate(NAMES):
            he, his = ("he", "his") if gender == "m" else ("she", "her")
            slots = {"N": name, "n": zh_name, "he": he, "He": _cap(he), "his": his, "His": _cap(his),
                     "his_zh": "他的" if gender == "m" else "她的"}  # fmt: skip
            split = "test" if f"{t}-{n}" in held_stories else "train"
            for lang, (story, right, wrong) in (("en", template[:3]), ("zh", template[3:])):
                if lang not in langs:
                    continue
                pair = f"{lang}-story-{t:02d}{n:02d}"
                story = story.format(**slots)
                for ending, text in (("right", right), ("wrong", wrong)):
                    text = text.format(**slots)
                    glue = " " if lang == "en" else ""
                    stories.append(Utterance(f"{pair}-{ending}", text=story + glue + text, lang=lang, extra={
                        "role": "story", "task": "story", "split": split, "pair": pair, "story": story,
                        "ending": text, "right": ending == "right"}))  # fmt: skip
    return questions + list(answers.values()) + facts + stories


def write_tiny_texts(out: str | os.PathLike, langs: tuple[str, ...] = ("en", "zh")) -> dict:
    """Write the domain as one text manifest (atomically); returns counts by role, split and language."""
    bad = [lang for lang in langs if lang not in ASSISTANT]
    if bad or not langs:
        from ..errors import Glm4VoiceError

        raise Glm4VoiceError(f"languages are en and zh, not {', '.join(bad) or 'none'}")
    rows = tiny_texts(tuple(langs))
    write_manifest(Path(out), rows)
    counts = Counter(f"{r.lang}/{r.extra['role']}/{r.extra.get('split', '-')}" for r in rows)
    return {"out": str(out), "rows": len(rows), "counts": dict(sorted(counts.items())),
            "tasks": sorted({r.extra["task"] for r in rows if "task" in r.extra})}  # fmt: skip
