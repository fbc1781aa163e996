"""Lesson cells In[3]-In[5]: a task that depends on two other tasks.

    python examples/01_task_dependencies.py

``add_arrays`` is given the ObjectRefs of two ``make_array`` tasks; the
fabric waits for them and passes their values (NumPy arrays), so no ``get`` is
needed in between. The two ``make_array(20)`` tasks sleep 2 s each in
parallel, then ``add_arrays`` sleeps 2 s: about 4 s in all. Output (the
numbers are random):

    [ 1.46278599  1.3091778   0.83837591 ... 20 numbers ... -1.99027404]
    Total time: duration:  4.032 seconds
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
        id1 = make_array.remote(20)
        id2 = make_array.remote(20)
        id3 = add_arrays.remote(id1, id2)
        print(ray.get(id3))
        pd(time.time() - start, prefix="Total time:")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
