#!/usr/bin/env python3
"""Regenerates the archive cases of the bad-input corpus (hostile tar files as ConfigMap
binaryData). Run from this directory; writes archive-*.yaml."""
import base64, gzip, io, random, tarfile

def tar_bytes(members, gz=False):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if gz else raw

def reg(name, data=b"x"):
    i = tarfile.TarInfo(name); i.size = len(data); i.mode = 0o644; return (i, data)

def special(name, kind, **kw):
    i = tarfile.TarInfo(name); i.type = kind
    for k, v in kw.items(): setattr(i, k, v)
    return (i, None)

class Zeros(io.RawIOBase):
    pass

def bomb(size):
    # One file of `size` zero bytes, gzip-compressed to about size/1000.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        i = tarfile.TarInfo("zeros.bin"); i.size = size
        t.addfile(i, io.BytesIO(b"\0" * size))
    return gzip.compress(buf.getvalue(), compresslevel=9, mtime=0)

CASES = {
    "archive-dotdot-entry": ("an archive entry ../evil.sh tries to leave the unpack directory",
        "InvalidContext", "../evil.sh", tar_bytes([reg("../evil.sh")]), "ctx.tar"),
    "archive-absolute-entry": ("an archive entry with an absolute path /etc/cron.d/evil",
        "InvalidContext", "/etc/cron.d/evil", tar_bytes([reg("/etc/cron.d/evil")]), "ctx.tar"),
    "archive-nested-dotdot-entry": ("an archive entry a/../../evil climbs out through a directory",
        "InvalidContext", "evil", tar_bytes([reg("a/../../evil")]), "ctx.tar"),
    "archive-write-through-symlink": ("a symlink to /etc then a file written through it (etc-link/passwd)",
        "InvalidContext", "etc-link", tar_bytes([special("etc-link", tarfile.SYMTYPE, linkname="/etc"), reg("etc-link/passwd")]), "ctx.tar"),
    "archive-hard-link": ("an archive hard link entry",
        "InvalidContext", "hard", tar_bytes([reg("a.txt"), special("hard", tarfile.LNKTYPE, linkname="a.txt")]), "ctx.tar"),
    "archive-hard-link-outside": ("an archive hard link to /etc/shadow",
        "InvalidContext", "shadow", tar_bytes([special("shadow", tarfile.LNKTYPE, linkname="/etc/shadow")]), "ctx.tar"),
    "archive-char-device": ("an archive holding a character device (like /dev/null)",
        "InvalidContext", "null", tar_bytes([special("null", tarfile.CHRTYPE, devmajor=1, devminor=3)]), "ctx.tar"),
    "archive-block-device": ("an archive holding a block device",
        "InvalidContext", "sda", tar_bytes([special("sda", tarfile.BLKTYPE, devmajor=8, devminor=0)]), "ctx.tar"),
    "archive-fifo": ("an archive holding a fifo",
        "InvalidContext", "pipe", tar_bytes([special("pipe", tarfile.FIFOTYPE)]), "ctx.tar"),
    "archive-bomb": ("a 64 MiB file of zeros gzip-compressed to a few KiB, over the controller's 8 MiB context limit",
        "ContextTooLarge", "8388608", bomb(64 << 20), "ctx.tar.gz"),
    "archive-garbage": ("a key marked archive: true that is not a tar",
        "InvalidContext", "ctx.tar", b"this is not a tar archive, just text\n" * 20, "ctx.tar"),
    "archive-truncated-gzip": ("a .tar.gz cut in the middle",
        "InvalidContext", "ctx.tar.gz", tar_bytes([reg("a.txt", random.Random(1).randbytes(16384))], gz=True)[:4000], "ctx.tar.gz"),
}

for name, (what, reason, needle, data, key) in CASES.items():
    b64 = base64.b64encode(data).decode()
    with open(f"{name}.yaml", "w") as f:
        f.write(f"""# {what}.
# expect: reason={reason} message~={needle}
apiVersion: v1
kind: ConfigMap
metadata: {{name: ${{NAME}}-src, namespace: ${{NS}}}}
binaryData:
  {key}: {b64}
---
apiVersion: imagebuild.dev/v1alpha1
kind: ImageBuild
metadata: {{name: ${{NAME}}, namespace: ${{NS}}}}
spec:
  context:
    configMaps:
      - name: ${{NAME}}-src
        items: [{{key: {key}, path: app, archive: true}}]
  image: ${{IMAGE}}
""")
