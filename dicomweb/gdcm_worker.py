"""Decode one instance with GDCM, in a child process of its own.

``python gdcm_worker.py MEMORY_LIMIT < instance.dcm > decoded.dcm``: reads a Part 10 file on
stdin and writes it back with its pixel data decoded to Explicit VR Little Endian; on
failure, exits 1 with the reason as the last line of stderr.

GDCM reads streams pydicom's codecs refuse (a 12-bit JPEG Extended file with invalid scan
parameters, for one), but it is C++ that can corrupt its heap on such streams: it never runs
inside the node, only here, where a crash, a hang or a runaway allocation (capped at
MEMORY_LIMIT bytes of address space) ends this process only. Run as a script, it imports
neither the node nor FastAPI.
"""

from __future__ import annotations

import resource
import sys
import tempfile
from pathlib import Path


def main() -> None:
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import gdcm  # after the limit, which then covers GDCM's loading too

    data = sys.stdin.buffer.read()
    with tempfile.TemporaryDirectory(prefix="pacsnode-gdcm-") as folder:
        source, target = Path(folder, "in.dcm"), Path(folder, "out.dcm")
        source.write_bytes(data)
        del data
        reader = gdcm.ImageReader()
        reader.SetFileName(str(source))
        if not reader.Read():
            sys.exit("GDCM cannot read the file")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.ExplicitVRLittleEndian))
        change.SetInput(reader.GetImage())
        if not change.Change():
            sys.exit("GDCM cannot decode the pixel data")
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(target))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            sys.exit("GDCM cannot write the decoded instance")
        sys.stdout.buffer.write(target.read_bytes())


if __name__ == "__main__":
    main()
