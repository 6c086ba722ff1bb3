"""Test hooks shared by the feature-cache tests: count the chunks an extraction computes, stop it midway."""

import helpers.features as hf


def count_extracted(monkeypatch) -> list[int]:
    """Record the number of images of each chunk the extraction computes. (``_extract_chunk`` is wrapped, not
    ``encode_images``: the extraction code is part of the cache key, so replacing it would change the key.)"""
    real, counts = hf._extract_chunk, []

    def extract_chunk(*args, **kwargs):
        arrays = real(*args, **kwargs)
        counts.append(len(arrays["index"]))
        return arrays

    monkeypatch.setattr(hf, "_extract_chunk", extract_chunk)
    return counts


def interrupt_after(monkeypatch, n_chunks: int) -> list[str]:
    """Make the extraction stop (as by Ctrl-C) when it is about to write its chunk number ``n_chunks + 1``."""
    real, written = hf._save_part, []

    def save(path, arrays):
        if len(written) >= n_chunks:
            raise KeyboardInterrupt(f"simulated interruption after {n_chunks} chunks")
        real(path, arrays)
        written.append(path.name)

    monkeypatch.setattr(hf, "_save_part", save)
    return written
