"""Pipeline steps, one small class per rule family (see ``base.py`` for the counting contract)."""
