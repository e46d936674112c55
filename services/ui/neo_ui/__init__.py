"""Neo's web UI: the chat app and the preference-labeling app (``neo ui``), and ``neo prefs``."""
