"""Lesson cell In[10]: ``wait`` with ``num_returns=1`` and a timeout.

    python examples/03_wait_one.py

The same five chains as 02_get_all.py (finishing at 0, 2, 4, 6 and 8 s), but
each result is printed as soon as it is ready: ``wait`` returns when one ref
is ready (or after 10 s), and the loop waits again on the rest. Output:

    Returned   1 completed tasks. (elapsed time:  0.005)
    0: []
    Returned   1 completed tasks. (elapsed time:  2.012)
    10: [...]
    Returned   1 completed tasks. (elapsed time:  4.015)
    20: [...]
    Returned   1 completed tasks. (elapsed time:  6.012)
    30: [...]
    Returned   1 completed tasks. (elapsed time:  8.0xx)
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

        waiting_ids = list(added_array_ids)        # Assign a working list to the full list of ids
        while len(waiting_ids) > 0:                # Loop until all tasks have completed
            # Call ray.wait with:
            #   1. the list of ids we're still waiting to complete,
            #   2. tell it to return immediately as soon as one of them completes,
            #   3. tell it wait up to 10 seconds before timing out.
            ready_ids, remaining_ids = ray.wait(waiting_ids, num_returns=1, timeout=10.0)
            print('Returned {:3d} completed tasks. (elapsed time: {:6.3f})'.format(len(ready_ids), time.time() - start))
            for array in ray.get(ready_ids):
                print(f'{array.size}: {array}')

            waiting_ids = remaining_ids  # Reset this list; don't include the completed ids in the list again!

        pd(time.time() - start, prefix="Total time:")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
