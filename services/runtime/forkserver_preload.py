"""Imported by the compute pool's forkserver as it starts (multiprocessing's preload): it dies with the
service that started it (services/runtime/deathsig.py). Nothing else imports this module."""

from services.runtime.deathsig import die_with_parent

die_with_parent()
