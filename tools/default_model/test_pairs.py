"""Print the 300 test-split seed pairs used to score hair swaps: A:B with B seven test seeds on."""

seeds = [s for s in range(3000) if s % 10 == 9]
print(",".join(f"{seeds[i]}:{seeds[(i + 7) % len(seeds)]}" for i in range(len(seeds))))
