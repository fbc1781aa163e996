"""Lesson cells In[3] and In[4]: the two tasks every example uses.

``make_array(n)`` sleeps n/10 s and returns n random numbers;
``add_arrays(a1, a2)`` sleeps a1.size/10 s and adds them.
"""
import os
import sys
import time

import numpy as np

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
import zfabric as ray  # noqa: E402


@ray.remote
def make_array(n):
    time.sleep(n/10.0)
    return np.random.standard_normal(n)


@ray.remote
def add_arrays(a1, a2):
    time.sleep(a1.size/10.0)
    return np.add(a1, a2)
