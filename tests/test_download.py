"""raddiffusion download against a local HTTP server on 127.0.0.1 (no network): resume, verification, unpacking."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import raddiffusion as rd
from raddiffusion.cli import main
from raddiffusion.data.nih import NIH_LABELS
from raddiffusion.data.public import transfer
from raddiffusion.data.public import read_catalog
from raddiffusion.data.public.transfer import fetch
from raddiffusion.data.synth import synthesize
from raddiffusion.data.tree import DataError

TB_IMAGE_SIDE = 96


class Server:
    """Files served from memory with range requests; ``cut[name] = n`` drops the next response after n bytes."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.ranges: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the stdlib's name)
                name = self.path.lstrip("/")
                server.ranges.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                body, start = server.files[name], 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = server.cut.pop(name, None)
                self.wfile.write(body[start:cut] if cut is not None else body[start:])

            def log_message(self, *args):
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.http.server_port}/{name}"

    def table(self, path: Path, name: str, files: list[dict], arrange: str = "as-is") -> Path:
        """A one-set table whose files are served here (url from the name)."""
        entry = {"title": f"test set {name}", "licence": "test", "citation": "test", "page": self.url(""),
                 "arrange": arrange, "files": [{"url": self.url(f["name"]), **f} for f in files]}
        path.write_text(json.dumps({name: entry}))
        return path


@pytest.fixture
def server():
    serving = Server()
    yield serving
    serving.http.shutdown()
    serving.http.server_close()


def _bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (TB_IMAGE_SIDE, TB_IMAGE_SIDE), np.uint8)).save(
        buffer, format="PNG")
    return buffer.getvalue()


def test_a_dropped_connection_is_resumed_with_a_range_request(server, tmp_path):
    data = _bytes(300_000)
    server.files["big.bin"], server.cut["big.bin"] = data, 120_000
    digest = fetch(server.url("big.bin"), tmp_path / "big.bin", len(data), _sha(data), progress=False)
    assert digest == _sha(data) and (tmp_path / "big.bin").read_bytes() == data
    assert server.ranges == [("big.bin", None), ("big.bin", "bytes=120000-")]
    assert not (tmp_path / "big.bin.part").exists()


def test_a_killed_download_keeps_its_part_and_the_next_run_fetches_only_the_rest(server, tmp_path, monkeypatch):
    data = _bytes(200_000, seed=1)
    server.files["a.bin"], server.cut["a.bin"] = data, 50_000
    monkeypatch.setattr(transfer, "RETRIES", 0)
    with pytest.raises(DataError, match="failed at 50,000 bytes.*run the command again to resume"):
        fetch(server.url("a.bin"), tmp_path / "a.bin", len(data), progress=False)
    assert (tmp_path / "a.bin.part").stat().st_size == 50_000 and not (tmp_path / "a.bin").exists()
    fetch(server.url("a.bin"), tmp_path / "a.bin", len(data), progress=False)
    assert (tmp_path / "a.bin").read_bytes() == data and server.ranges[-1] == ("a.bin", "bytes=50000-")


def test_a_corrupt_archive_is_refused_in_one_line_and_nothing_is_unpacked(server, tmp_path, capsys):
    good = _tar({"images/x.png": _png(0)})
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2] ^= 0xFF
    server.files["images_001.tar.gz"] = bytes(corrupt)
    table = server.table(tmp_path / "table.json", "t", [{"name": "images_001.tar.gz", "bytes": len(good),
                                                         "sha256": _sha(good), "unpack_to": "images_001"}])
    root = tmp_path / "root"
    assert main(["download", "t", str(root), "--table", str(table), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "images_001.tar.gz" in error and "corrupt" in error
    assert not (root / "images_001").exists() and not list(root.rglob("*.part"))


def test_an_unreadable_archive_without_a_checksum_is_refused_in_one_line(server, tmp_path, capsys):
    server.files["set.zip"] = b"PK this is not a zip archive" + _bytes(1000)
    table = server.table(tmp_path / "table.json", "t", [{"name": "set.zip", "unpack_to": "set"}])
    assert main(["download", "t", str(tmp_path / "root"), "--table", str(table), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "not a readable tar or zip archive" in error
    assert [p.name for p in (tmp_path / "root").iterdir() if not p.name.startswith(".")] == []


@pytest.mark.parametrize("archive", ["tar", "zip"])
@pytest.mark.parametrize("member", ["../escaped.txt", "/tmp/escaped.txt", "inside/../../escaped.txt"])
def test_an_archive_with_a_path_that_escapes_root_is_refused(server, tmp_path, capsys, archive, member):
    pack = _tar if archive == "tar" else _zip
    server.files[f"evil.{archive}"] = pack({"fine.txt": b"ok", member: b"escaped"})
    table = server.table(tmp_path / "table.json", "t", [{"name": f"evil.{archive}", "unpack_to": "evil"}])
    root = tmp_path / "deep" / "root"
    assert main(["download", "t", str(root), "--table", str(table), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "outside the destination" in error and repr(member) in error
    assert not list(tmp_path.rglob("escaped.txt")) and not (root / "evil").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".evil")]  # no half-unpacked folder left


def test_a_symlink_member_is_refused(server, tmp_path, capsys):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        link = tarfile.TarInfo("images/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    server.files["l.tar.gz"] = buffer.getvalue()
    table = server.table(tmp_path / "table.json", "t", [{"name": "l.tar.gz", "unpack_to": "l"}])
    assert main(["download", "t", str(tmp_path / "root"), "--table", str(table), "--quiet"]) == 2
    assert "a link or a special file" in capsys.readouterr().err


def test_nih_from_the_local_server_preprocesses_with_no_flag(server, tmp_path, capsys):
    synthesize(tmp_path / "source", subjects=12, layout="nih", workers=1, progress=False)
    source = tmp_path / "source"
    pngs = sorted((source / "images").glob("*.png"))
    halves = {"images_001.tar.gz": pngs[: len(pngs) // 2], "images_002.tar.gz": pngs[len(pngs) // 2:]}
    files = []
    for name, part in halves.items():
        server.files[name] = _tar({f"images/{p.name}": p.read_bytes() for p in part})
        files.append({"name": name, "bytes": len(server.files[name]), "unpack_to": name.split(".")[0]})
    for name in ("Data_Entry_2017_v2020.csv", "train_val_list.txt", "test_list.txt"):
        server.files[name] = (source / name).read_bytes()
        files.append({"name": name, "sha256": _sha(server.files[name])})
    table = server.table(tmp_path / "table.json", "nih", files)
    root, store = tmp_path / "nih", tmp_path / "store"
    server.cut["images_002.tar.gz"] = 1000  # one dropped connection on the way
    assert main(["download", "nih", str(root), "--table", str(table), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"{len(pngs):,} images" in out and "next: raddiffusion preprocess" in out
    assert sorted(p.name for p in root.glob("images_00*/images/*.png")) == [p.name for p in pngs]
    assert not (root / ".downloads").exists()
    record = json.loads((root / "download.json").read_text())
    assert record["images_001.tar.gz"]["sha256"] == _sha(server.files["images_001.tar.gz"])
    assert main(["download", "nih", str(root), "--table", str(table), "--quiet"]) == 0  # done: nothing fetched
    assert "0 fetched now" in capsys.readouterr().out
    assert main(["preprocess", str(root), str(store), "--image-size", "32", "--workers", "1"]) == 0
    opened = rd.open_store(store)
    assert opened.dataset == "nih" and opened.label_names == NIH_LABELS and len(opened.index) == len(pngs)
    assert (opened.index.groupby("subject_id")["split"].nunique() == 1).all()


@pytest.mark.parametrize("prefix, folder", [("CHNCXR", "ChinaSet_AllFiles/CXR_png"),
                                            ("MCUCXR", "MontgomerySet/CXR_png")])
def test_a_tuberculosis_set_becomes_a_manifest_dataset_split_by_patient(server, tmp_path, prefix, folder):
    names = [f"{prefix}_{n:04d}_{n % 2}.png" for n in range(1, 41)]
    server.files["set.zip"] = _zip({f"{folder}/{name}": _png(i) for i, name in enumerate(names)}
                                   | {f"{folder.split('/')[0]}/ClinicalReadings/readme.txt": b"notes"})
    table = server.table(tmp_path / "table.json", "tb", [{"name": "set.zip", "unpack_to": "set"}],
                         arrange="tuberculosis")
    root, store = tmp_path / "tb", tmp_path / "store"
    assert main(["download", "tb", str(root), "--table", str(table), "--quiet"]) == 0
    assert main(["preprocess", str(root), str(store), "--image-size", "32", "--workers", "1"]) == 0
    opened = rd.open_store(store)
    assert opened.label_names == ("Tuberculosis",) and len(opened.index) == len(names)
    assert sorted(opened.labels["Tuberculosis"].tolist()) == sorted(n % 2 for n in range(1, 41))
    assert opened.index["subject_id"].nunique() == len(names) and set(opened.index["split"]) == {"train", "validate",
                                                                                                  "test"}


def test_files_without_a_direct_link_are_named_with_the_page_to_get_them(server, tmp_path, capsys):
    server.files["images_001.tar.gz"] = _tar({"images/00000001_000.png": _png(0)})
    table = server.table(tmp_path / "table.json", "t", [{"name": "images_001.tar.gz", "unpack_to": "images_001"}])
    entry = json.loads(table.read_text())
    entry["t"]["manual"] = ["Data_Entry_2017_v2020.csv", "test_list.txt"]
    table.write_text(json.dumps(entry))
    root = tmp_path / "root"
    assert main(["download", "t", str(root), "--table", str(table), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"next: put Data_Entry_2017_v2020.csv, test_list.txt from {server.url('')} into {root}" in out
    (root / "Data_Entry_2017_v2020.csv").write_text("x")
    (root / "test_list.txt").write_text("x")
    assert main(["download", "t", str(root), "--table", str(table), "--quiet"]) == 0
    assert f"next: raddiffusion preprocess {root} STORE" in capsys.readouterr().out


def test_the_built_in_table_lists_every_set_and_sends_agreement_sets_to_their_page(tmp_path, capsys):
    catalog = read_catalog()
    assert {"nih", "shenzhen", "montgomery", "chexpert", "mimic-cxr", "vindr-cxr", "padchest"} <= set(catalog)
    nih = [item["name"] for item in catalog["nih"]["files"]]
    assert [n for n in nih if n.endswith(".tar.gz")] == [f"images_{i:03d}.tar.gz" for i in range(1, 13)]
    for entry in catalog.values():
        assert all(item["url"].startswith("https://") for item in entry.get("files", []))
    assert main(["download", "--list"]) == 0
    listing = capsys.readouterr().out
    assert all(f"{name}: " in listing for name in catalog) and "licence:" in listing and "cite:" in listing
    assert main(["download", "chexpert", str(tmp_path / "c")]) == 2
    error = capsys.readouterr().err
    assert catalog["chexpert"]["agreement"] in error and not (tmp_path / "c").exists()
