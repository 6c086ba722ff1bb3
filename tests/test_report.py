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
