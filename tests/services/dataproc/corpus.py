"""Crafted documents for the dataproc tests: clean English and Chinese prose that passes every
default rule, and helpers to make near-duplicates of them."""

from __future__ import annotations

EN_DOCS = [
    (
        "The river town woke early on market day, and the bakers were the first to light their ovens.\n"
        "By six o'clock the square was full of carts loaded with apples, cabbages and wheels of cheese.\n"
        "Children ran between the stalls while their parents argued cheerfully about the price of eggs.\n"
        "An old fiddler played near the fountain, and a small crowd gathered to listen to his songs.\n"
        "At noon the church bell rang, and the traders covered their goods to share a simple lunch.\n"
        "In the afternoon the wind turned cold, so most families packed up and walked home together.\n"
        "The mayor thanked everyone for coming and promised that next month would be even better."
    ),
    (
        "Learning to repair a bicycle is a practical skill that saves money and builds confidence.\n"
        "Start with the tyres, because punctures are the most common problem that riders face.\n"
        "Remove the wheel, lever the tyre off the rim, and find the hole by listening for air.\n"
        "Roughen the area with sandpaper, apply the glue, and wait until it becomes slightly tacky.\n"
        "Press the patch firmly in place, then check the inside of the tyre for sharp objects.\n"
        "Next, learn to adjust the brakes so that the pads meet the rim evenly on both sides.\n"
        "Finally, clean and oil the chain regularly, and your bicycle will serve you for many years."
    ),
    (
        "Astronomers have long wondered how the first galaxies formed after the big bang.\n"
        "New telescopes can now detect faint light that has travelled for billions of years.\n"
        "These observations show that young galaxies were smaller and more irregular than ours.\n"
        "Many of them were forming stars at a furious rate, far faster than the Milky Way does today.\n"
        "Gravity pulled the galaxies together over time, and collisions built larger systems.\n"
        "Computer simulations of dark matter help scientists to test their ideas about this history.\n"
        "Each new result raises fresh questions, and that is what keeps the field so exciting."
    ),
    (
        "Good soup begins with a good stock, and a good stock begins with patience and care.\n"
        "Roast the bones until they are golden, because the colour gives the soup its deep flavour.\n"
        "Cover them with cold water, add onions, carrots and celery, and bring the pot to a simmer.\n"
        "Skim the foam from the surface often, and never let the liquid boil hard or it will cloud.\n"
        "After several hours, strain the stock through a fine sieve and let it cool completely.\n"
        "The fat will rise to the top and harden, which makes it easy to lift away with a spoon.\n"
        "With the stock ready, a warming bowl of soup is only a few minutes away on a winter night."
    ),
]

ZH_DOCS = [
    (
        "春天来了，城外的田野渐渐变绿，农民们开始忙着播种。\n"
        "小河边的柳树发出了新芽，孩子们在岸边放风筝，笑声传得很远。\n"
        "村里的老人坐在门口晒太阳，一边喝茶一边谈论今年的收成。\n"
        "傍晚时分，炊烟从各家的屋顶升起，空气里弥漫着饭菜的香味。\n"
        "夜里下了一场细雨，第二天早上，整个村子显得格外清新。"
    ),
    (
        "学习一门外语需要耐心和坚持，每天进步一点点就很好。\n"
        "首先要多听多说，不要害怕犯错，因为错误是学习的一部分。\n"
        "其次要养成阅读的习惯，从简单的故事开始，慢慢增加难度。\n"
        "遇到不认识的词语时，可以先根据上下文猜测，再查词典确认。\n"
        "最后，找一个语言伙伴一起练习，会让学习变得更加有趣。"
    ),
    (
        "这座古老的城市有两千多年的历史，保存着许多珍贵的文物。\n"
        "城中心的博物馆里陈列着青铜器、瓷器和书画，吸引了大量游客。\n"
        "沿着石板路往前走，可以看到传统的四合院和热闹的小吃街。\n"
        "当地人热情好客，常常会向外地游客介绍家乡的风俗和美食。\n"
        "每到节日，街上张灯结彩，人们载歌载舞，气氛十分热烈。"
    ),
]


def edit_words(text: str, edits: list[tuple[int, str]]) -> str:
    """Replace the i-th whitespace-separated word (counted over the whole text) by a new one."""
    words = text.split(" ")
    for i, new in edits:
        words[i] = new
    return " ".join(words)


def reorder_lines(text: str) -> str:
    lines = text.split("\n")
    return "\n".join(lines[1:] + lines[:1])


def respace(text: str) -> str:
    return "  " + text.replace(" ", "   ").replace("\n", "\n\n") + "\n\n"
