"""Lesson cell In[13]: ``wait`` with ``num_returns=2``.

    python examples/04_wait_two.py

The same five chains (finishing at 0, 2, 4, 6 and 8 s), taken two at a time:
``wait`` returns when two refs are ready, so the 0 s result waits for the 2 s
one and the 4 s result for the 6 s one. With one ref left the loop asks for 1
(asking for more refs than the list holds is an error). Output:

    Returned   2 completed tasks. (elapsed time:  2.010)
    0: []
    10: [...]
    Returned   2 completed tasks. (elapsed time:  6.009)
    20: [...]
    30: [...]
    Returned   1 completed tasks. (elapsed time:  8.014)
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
            #   2. tell it to return immediately as soon as TWO of them complete,
            #   3. tell it wait up to 10 seconds before timing out.
            return_n = 2 if len(waiting_ids) >= 2 else 1   # asking for more than the list holds is an error
            ready_ids, remaining_ids = ray.wait(waiting_ids, num_returns=return_n, timeout=10.0)
            print('Returned {:3d} completed tasks. (elapsed time: {:6.3f})'.format(len(ready_ids), time.time() - start))
            for array in ray.get(ready_ids):
                print(f'{array.size}: {array}')

            waiting_ids = remaining_ids  # Reset this list; don't include the completed ids in the list again!

        pd(time.time() - start, prefix="Total time:")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
