"""Storage: one almanac per database, and a full disk.

- The lock is on almanac.db itself: with any almanac.lock of old deleted, a
  second almanac on the same data_dir refuses to start, naming the data_dir
  and the first one's pid, and the first goes on serving (and SQLite's own
  locking is undisturbed: another process reads the database meanwhile).
- On a 2 MiB tmpfs, writes go on until they get 507 storage_full; nothing
  acknowledged is lost, nothing refused appears, and once space is freed
  writes succeed again (and all of it survives a restart). Needs root to
  mount the tmpfs; skipped with a message otherwise.
"""
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Daemon, curl  # noqa: E402


class Lock(unittest.TestCase):
    def test_second_almanac_refused_without_a_lock_file(self):
        first = Daemon()
        second = None
        try:
            first.start()
            r = curl(first, "PUT", "/api/v1/keys/lock/a", "1")
            self.assertIn(r.status, (200, 201), r)
            rev_a = r.json()["rev"]
            lock = os.path.join(first.data_dir, "almanac.lock")
            if os.path.exists(lock):
                os.unlink(lock)
            second = Daemon(data_dir=first.data_dir)
            with self.assertRaises(RuntimeError) as cm:
                second.start()
            msg = str(cm.exception)
            self.assertIn(f"data_dir {first.data_dir} is in use by another almanac", msg)
            self.assertIn(f"pid {first.proc.pid}", msg)
            # flock and SQLite's fcntl locks do not meet: a reader works.
            db = sqlite3.connect(os.path.join(first.data_dir, "almanac.db"), timeout=5)
            self.assertEqual(db.execute("SELECT value FROM entries WHERE key = 'lock/a'")
                             .fetchone()[0], b"1")
            db.close()
            # The first goes on, its revs going on from its own.
            r = curl(first, "PUT", "/api/v1/keys/lock/b", "2")
            self.assertIn(r.status, (200, 201), r)
            self.assertEqual(r.json()["rev"], rev_a + 1)
            self.assertEqual(curl(first, "GET", "/api/v1/keys/lock/a").body, b"1")
            self.assertEqual(first.stop(), 0)
            # Once it is gone, the data_dir is free.
            first.start()
            self.assertEqual(curl(first, "GET", "/api/v1/keys/lock/b").body, b"2")
        finally:
            if second is not None:
                second.cleanup()
            first.cleanup()


class FullDisk(unittest.TestCase):
    def setUp(self):
        self.mnt = tempfile.mkdtemp(prefix="almanac-tmpfs-")
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", self.mnt],
                             capture_output=True, text=True)
        if out.returncode != 0:
            os.rmdir(self.mnt)
            self.skipTest("cannot mount a 2 MiB tmpfs here (needs root and mount): "
                          f"{out.stderr.strip()}")

    def tearDown(self):
        subprocess.run(["umount", self.mnt], check=False)
        shutil.rmtree(self.mnt, ignore_errors=True)

    def test_full_disk_then_space_freed(self):
        filler = os.path.join(self.mnt, "filler")
        with open(filler, "wb") as f:
            f.write(b"\0" * (1280 * 1024))
        d = Daemon(data_dir=os.path.join(self.mnt, "data"))
        acked, refused = {}, []
        try:
            d.start()
            value = "x" * 8000
            n, full = 0, 0
            while full < 5 and n < 2000:
                key = f"full/{n}"
                r = curl(d, "PUT", f"/api/v1/keys/{key}", f"{n}:{value}")
                n += 1
                if r.status in (200, 201):
                    acked[key] = f"{n - 1}:{value}".encode()
                else:
                    self.assertEqual(r.status, 507, r)
                    self.assertEqual(r.json()["error"], "storage_full", r)
                    refused.append(key)
                    full += 1
            self.assertGreater(len(acked), 10)
            self.assertEqual(full, 5, "the disk never filled")
            self.assertFalse(curl(d, "GET", "/api/v1/info").json()["storage"]["writable"])
            # Reads answer from what was committed.
            for key, v in acked.items():
                self.assertEqual(curl(d, "GET", f"/api/v1/keys/{key}").body, v)
            for key in refused:
                self.assertEqual(curl(d, "GET", f"/api/v1/keys/{key}").status, 404)
            # Space freed: writes succeed again.
            os.unlink(filler)
            r = curl(d, "PUT", "/api/v1/keys/full/after", "ok")
            self.assertIn(r.status, (200, 201), r)
            acked["full/after"] = b"ok"
            self.assertTrue(curl(d, "GET", "/api/v1/info").json()["storage"]["writable"])
            self.assertEqual(d.stop(), 0)
            # Nothing acknowledged lost, nothing refused kept.
            d.start()
            for key, v in acked.items():
                self.assertEqual(curl(d, "GET", f"/api/v1/keys/{key}").body, v, key)
            for key in refused:
                self.assertEqual(curl(d, "GET", f"/api/v1/keys/{key}").status, 404, key)
        finally:
            d.cleanup()


if __name__ == "__main__":
    harness.main()
