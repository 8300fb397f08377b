"""Read an offline W&B run back (wandb 0.31 ships no reader for `run-*.wandb`).

The file is a LevelDB-style log: a 7-byte header (`:W&B`, magic 0xBEE1, version), then 32 KiB
blocks of records, each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle,
4 last) holding serialized `wandb_internal_pb2.Record` messages.
"""

from __future__ import annotations

import glob
import json
import os
import struct

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024


def records(path: str):
    data = open(path, "rb").read()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1, "not a W&B log"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            yield pb.Record.FromString(payload)
        elif kind == 2:
            pending = payload
        elif kind == 3:
            pending += payload
        elif kind == 4:
            yield pb.Record.FromString(pending + payload)


def read_run(run_dir: str) -> dict:
    """{"group", "config", "history": [{key: value}], "summary"} of the one offline run in run_dir."""
    files = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(files) == 1, files
    out = {"group": None, "config": {}, "history": [], "summary": {}}
    for rec in records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["group"] = rec.run.run_group or out["group"]
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            out["history"].append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            out["summary"].update({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.summary.update})
    return out
