"""Lesson cell In[7]: ``get`` on a whole list waits for every element.

    python examples/02_get_all.py

Five chains ``make_array(n*10)`` -> ``add_arrays(id, id)`` for n = 0..4; chain
n sleeps n s in each task, so it finishes at 2n s: 0, 2, 4, 6 and 8 s. One
``get`` of the whole list returns only when the slowest is done, so nothing
is printed for about 8 s, then everything at once:

    0: []
    10: [-2.70758035 -0.99925313 ...]
    20: [...]
    30: [...]
    40: [...]
    Total time: duration:  8.0xx seconds
"""
import os
import sys
import time

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, like the lesson's sys.path.append('..')
import zfabric as ray  # noqa: E402
from _printing import pd  # noqa: E402  (the lesson's util.printing)
from lesson_tasks import add_arrays, make_array  # noqa: E402  (cells In[3], In[4])


def main():
    ray.init(num_cpus=8)  # the tasks sleep, so more CPUs than cores is fine
    try:
        start = time.time()
        array_ids = [make_array.remote(n*10) for n in range(5)]
        added_array_ids = [add_arrays.remote(id, id) for id in array_ids]
        for array in ray.get(added_array_ids):
            print(f'{array.size}: {array}')
        pd(time.time() - start, prefix="Total time:")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
