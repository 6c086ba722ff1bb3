"""Tables written by the notebooks: CSV and Markdown from one rounding."""

import pandas as pd

from helpers.report import save_table


def test_save_table_keeps_integers_whole_and_rounds_floats(tmp_path):
    # all columns numeric: tabulate then saw each row as floats and printed the seed as "0.00"
    df = pd.DataFrame({"split seed": [0, 1], "ratio": [0.25, 0.123456], "n": [10000, 1000000]})
    save_table(df, "t", tmp_path)
    assert (tmp_path / "t.csv").read_text().splitlines() == ["split seed,ratio,n", "0,0.25,10000", "1,0.12,1000000"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in (tmp_path / "t.md").read_text().splitlines()]
    assert rows[0] == ["split seed", "ratio", "n"]
    assert rows[2:] == [["0", "0.25", "10000"], ["1", "0.12", "1000000"]]
    save_table(df.set_index("split seed"), "i", tmp_path, index=True, decimals=3)
    assert [c.strip() for c in (tmp_path / "i.md").read_text().splitlines()[3].strip("|").split("|")] == \
        ["1", "0.123", "1000000"]


def test_sample_grid_caps_its_columns_and_spaces_the_images_evenly():
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np

    from helpers import plots

    class Images:  # a dataset stand-in: image i is a flat colour i, so the drawn images say which were picked
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def load_rgb(self, i):
            return np.full((4, 4, 3), i % 256, dtype=np.uint8)

    fig = plots.sample_grid({"a": Images(1000), "b": Images(5)}, per_row=1000)
    axes = np.array(fig.axes).reshape(2, -1)
    assert axes.shape == (2, 16)  # one per class of 1,000 would be unreadable: capped
    first_row = [int(ax.images[0].get_array()[0, 0, 0]) for ax in axes[0]]
    assert first_row == [int(i) % 256 for i in np.linspace(0, 999, 16).astype(int)]
    assert [int(ax.images[0].get_array()[0, 0, 0]) for ax in axes[1]] == np.linspace(0, 4, 16).astype(int).tolist()
    assert len(np.array(plots.sample_grid({"a": Images(10)}, per_row=10).axes)) == 10  # small grids unchanged
