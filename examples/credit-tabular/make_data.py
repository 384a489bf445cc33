"""Write a seeded synthetic credit file (one bank's customers, ~7% defaults).

python make_data.py --out data/credit.csv --rows 3000 --seed 0
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

EMPLOYMENT = ["employed", "self-employed", "unemployed", "retired"]
HOUSING = ["own", "rent", "mortgage"]


def make(out: Path, *, rows: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, size=rows)
    income = np.clip(rng.lognormal(10.7, 0.5, size=rows), 0, 400_000)
    debt = np.clip(rng.gamma(2.0, 0.2, size=rows), 0, 3)
    months = np.minimum(rng.integers(0, 480, size=rows), (age - 18) * 12)
    employment = rng.choice(len(EMPLOYMENT), size=rows, p=[0.7, 0.15, 0.08, 0.07])
    housing = rng.choice(len(HOUSING), size=rows, p=[0.3, 0.4, 0.3])
    # Defaults: more debt, less income, unemployment; the intercept keeps them rare.
    logit = -2.6 + 3.0 * debt - 1.2 * (income / 50_000) + 2.0 * (employment == 2) - 0.004 * months
    default = rng.random(rows) < 1 / (1 + np.exp(-logit))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "customer_id",
                "age",
                "income",
                "debt_ratio",
                "months_employed",
                "employment",
                "housing",
                "default",
            ]
        )
        for i in range(rows):
            w.writerow(
                [
                    f"c{i:06d}",
                    int(age[i]),
                    round(float(income[i]), 2),
                    "" if i % 97 == 0 else round(float(debt[i]), 3),  # a few missing values
                    int(months[i]),
                    EMPLOYMENT[employment[i]],
                    HOUSING[housing[i]],
                    "yes" if default[i] else "no",
                ]
            )
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("data/credit.csv"))
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = make(args.out, rows=args.rows, seed=args.seed)
    print(f"wrote {path}")
