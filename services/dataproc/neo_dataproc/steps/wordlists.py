"""Neo's default sensitive-word lists: a *starting point*, not a moderation policy.

Short lists of terms that are almost only found on gambling, spam and porn pages (in the spirit
of Matrix's ``bad_url_words.py`` and the bad-word files its filters read). Terms are matched as
substrings in Chinese and on word boundaries otherwise, case-insensitively; a document is
dropped when many of its lines hit (``SensitiveWordsFilter``), so a news article that names one
of them once stays. Extend per language with ``sensitive_words: {words: {zh: [...]}, files: {en:
[path]}}`` in the job config, or switch the defaults off with ``defaults: false``.

Caveat for the held-out scores: the held-out corpus's Chinese spam is built from a similar
vocabulary (it was written from the same common spam genres), so its junk.zh number measures that
the hook works, not how complete this list is on real web spam.
"""

from __future__ import annotations

DEFAULT_SENSITIVE_WORDS: dict[str, list[str]] = {
    "zh": [
        # gambling
        "百家乐", "老虎机", "六合彩", "时时彩", "北京赛车", "彩金", "博彩", "赌场", "赌博网站", "网上赌场",
        "真人娱乐", "在线娱乐城", "娱乐城", "葡京", "威尼斯人娱乐", "体育投注", "足球投注", "外围投注",
        "高额返水", "注册送", "首存", "棋牌游戏", "捕鱼游戏", "开奖直播",
        # spam / fraud
        "代开发票", "代开增值税", "信用卡套现", "套现", "刷单", "兼职刷单", "日赚千元", "日赚",
        "无抵押贷款", "网贷秒批", "私服", "传奇私服", "代孕", "黑客接单", "迷药", "窃听器",
        # adult
        "成人视频", "色情", "裸聊", "一夜情", "约炮", "av女优",
    ],
    "en": [
        "online casino", "casino bonus", "free spins", "slot machines online", "sports betting odds",
        "replica watches", "cheap viagra", "buy viagra", "viagra", "cialis", "payday loans", "porn", "xxx",
        "escort service", "weight loss pills", "make money fast", "work from home and earn",
    ],
}
