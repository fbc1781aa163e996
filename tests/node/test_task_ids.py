"""Task ids in a forked child: the zygote forks every worker from one
imported interpreter, so a child must not name its tasks as its parent does."""
import os

from zfabric import ids


def test_a_forked_child_names_its_tasks_apart_from_its_parent():
    before = ids.new_task_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # (the child: its first ids, then out without running pytest's exit)
        try:
            os.write(write, ids.new_task_id() + ids.new_task_id())
        finally:
            os._exit(0)
    os.close(write)
    try:
        got = b""
        while len(got) < 2 * ids.TASK_ID_SIZE:
            chunk = os.read(read, 64)
            if not chunk:
                break
            got += chunk
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    first, second = got[:ids.TASK_ID_SIZE], got[ids.TASK_ID_SIZE:]
    after = ids.new_task_id()
    assert first[:8] == second[:8] != before[:8]           # a prefix of its own
    assert int.from_bytes(first[8:], "big") == 1           # counted from 1 again
    assert int.from_bytes(second[8:], "big") == 2
    assert after[:8] == before[:8]                         # the parent's are unchanged
    assert int.from_bytes(after[8:], "big") == int.from_bytes(before[8:], "big") + 1
