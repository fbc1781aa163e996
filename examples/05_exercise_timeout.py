"""Lesson "Exercise 2": the ``num_returns=2`` loop of 04_wait_two.py with a
timeout of 2.5 s, shorter than the longest task. What happens now?

    python examples/05_exercise_timeout.py              # 2.5 s, then 1.5 s
    python examples/05_exercise_timeout.py 1.2 1        # your own TIMEOUT [NUM_RETURNS]

The five chains finish at 0, 2, 4, 6 and 8 s. When the timeout expires
before ``num_returns`` refs are ready, ``wait`` returns the ones that are
ready -- fewer than asked, possibly none -- and the rest stay in
``remaining_ids``, so the loop simply waits on them again. Nothing is lost;
the total is still about 8 s. Only when results come back changes.

timeout=2.5, num_returns=2 (the exercise)::

    Returned   2 completed tasks. (elapsed time:  2.0)    0 s and 2 s results
    Returned   1 completed tasks. (elapsed time:  4.5)    timed out: only the 4 s one
    Returned   1 completed tasks. (elapsed time:  7.0)    timed out: only the 6 s one
    Returned   1 completed tasks. (elapsed time:  8.0)    the last one (num_returns=1)
    Total time: duration:  8.0 seconds

timeout=1.5, num_returns=1 ("try other times"): a wait that times out with
nothing ready returns 0 completed tasks, and ``get([])`` is ``[]``::

    Returned   1 completed tasks. (elapsed time:  0.0)
    Returned   0 completed tasks. (elapsed time:  1.5)
    Returned   1 completed tasks. (elapsed time:  2.0)
    Returned   0 completed tasks. (elapsed time:  3.5)
    Returned   1 completed tasks. (elapsed time:  4.0)
    Returned   0 completed tasks. (elapsed time:  5.5)
    Returned   1 completed tasks. (elapsed time:  6.0)
    Returned   0 completed tasks. (elapsed time:  7.5)
    Returned   1 completed tasks. (elapsed time:  8.0)
    Total time: duration:  8.0 seconds

(each "Returned" line is followed by that many "size: [array]" lines.)
Timeouts that expire near a multiple of 2 s (e.g. 1.0 or 2.0) race with a
task finishing, and the output changes from run to run.
"""
import os
import sys
import time

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, like the lesson's sys.path.append('..')
import zfabric as ray  # noqa: E402
from _printing import pd  # noqa: E402  (the lesson's util.printing)
from lesson_tasks import add_arrays, make_array  # noqa: E402  (cells In[3], In[4])


def wait_loop(timeout, num_returns):
    print(f'== timeout={timeout}, num_returns={num_returns} ==')
    start = time.time()
    array_ids = [make_array.remote(n*10) for n in range(5)]
    added_array_ids = [add_arrays.remote(id, id) for id in array_ids]

    waiting_ids = list(added_array_ids)        # Assign a working list to the full list of ids
    while len(waiting_ids) > 0:                # Loop until all tasks have completed
        # Call ray.wait with:
        #   1. the list of ids we're still waiting to complete,
        #   2. tell it to return as soon as `num_returns` of them complete,
        #   3. tell it wait up to `timeout` seconds before timing out.
        return_n = num_returns if len(waiting_ids) >= num_returns else len(waiting_ids)
        ready_ids, remaining_ids = ray.wait(waiting_ids, num_returns=return_n, timeout=timeout)
        print('Returned {:3d} completed tasks. (elapsed time: {:6.3f})'.format(len(ready_ids), time.time() - start))
        for array in ray.get(ready_ids):
            print(f'{array.size}: {array}')

        waiting_ids = remaining_ids  # Reset this list; don't include the completed ids in the list again!

    pd(time.time() - start, prefix="Total time:")


def main(argv):
    if argv:
        runs = [(float(argv[0]), int(argv[1]) if len(argv) > 1 else 2)]
    else:
        runs = [(2.5, 2), (1.5, 1)]
    ray.init(num_cpus=8)  # the tasks sleep, so more CPUs than cores is fine
    try:
        for timeout, num_returns in runs:
            wait_loop(timeout, num_returns)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
