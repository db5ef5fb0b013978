"""Imported by the compute pool's forkserver as it starts (multiprocessing's preload): it dies with the
service that started it (services/runtime/deathsig.py). Nothing else imports this module."""

import os

from services.runtime.deathsig import PARENT, die_with_parent

die_with_parent()                    # the service's pid, which it put in the environment before starting the pool
os.environ[PARENT] = str(os.getpid())  # the workers, forked from here, die with this forkserver
