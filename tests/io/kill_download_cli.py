"""``keras-astro`` pointed at a local archive: the subprocess of ``tests/io/test_download_kill.py``.

Run as ``python tests/io/kill_download_cli.py <keras-astro arguments>``, e.g.
``spectra download targets.csv --out-dir DIR --store STORE`` or ``rgz fetch --out DIR``. It runs
the real command (:func:`keras_astro.cli.main`) after installing, if the environment asks for it,
a point where the run pauses to be killed (the archive addresses and the shard size are the
command's own ``--sas-url``, ``--skyview-url`` and ``--shard-size``):

``KILL_PAUSE`` and ``KILL_MARKER``
    ``shard:N`` — stop inside the N-th store shard write, after its rows are in the temporary
    file and before it is renamed into place; ``cutout:N`` — after the N-th cutout file is
    written under its temporary name, before the rename. The process then creates the file
    ``KILL_MARKER`` and sleeps until it is killed.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from pathlib import Path


def _pause_at(n: int):
    """A function that, on its n-th call, touches ``KILL_MARKER`` and sleeps until killed."""
    lock = threading.Lock()
    calls = [0]

    def maybe_pause() -> None:
        with lock:
            calls[0] += 1
            hit = calls[0] == n
        if hit:
            Path(os.environ["KILL_MARKER"]).touch()
            time.sleep(600)  # the test kills us long before

    return maybe_pause


def _install_pause(spec: str) -> None:
    what, _, n = spec.partition(":")
    maybe_pause = _pause_at(int(n))
    if what == "shard":
        from keras_astro.io import spectra_store

        close = spectra_store.StoreWriter.close

        @functools.wraps(close)
        def paused_close(self):
            if self._file is not None:  # rows written to the temporary file, not yet renamed
                self._file.flush()
                maybe_pause()
            return close(self)

        spectra_store.StoreWriter.close = paused_close
    elif what == "cutout":
        from astropy.io import fits

        writeto = fits.PrimaryHDU.writeto

        @functools.wraps(writeto)
        def paused_writeto(self, name, *args, **kwargs):
            result = writeto(self, name, *args, **kwargs)
            if str(name).endswith(".tmp"):  # write_cutout's temporary file, before os.replace
                maybe_pause()
            return result

        fits.PrimaryHDU.writeto = paused_writeto
    else:
        raise SystemExit(f"KILL_PAUSE: unknown pause point {spec!r} (shard:N or cutout:N)")


def main(argv: list[str]) -> int:
    if os.environ.get("KILL_PAUSE"):
        _install_pause(os.environ["KILL_PAUSE"])

    from keras_astro import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
