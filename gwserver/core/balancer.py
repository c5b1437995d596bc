"""Smooth weighted round robin, as nginx does it (ngx_http_upstream_get_peer).

Each pick adds every target's weight to its running score, takes the highest, and subtracts the
total from it. With weights 5:1:1 the order is a a b a c a a, not a a a a a b c.
"""


class SmoothWeighted:
    __slots__ = ("targets", "weights", "scores", "total")

    def __init__(self, targets):
        self.targets = [t for t in targets if t.weight > 0]
        self.weights = [t.weight for t in self.targets]
        self.scores = [0] * len(self.targets)
        self.total = sum(self.weights)

    def pick(self, exclude=()):
        """Return the next target, skipping any in ``exclude`` (tried already) when possible."""
        best = -1
        scores, weights = self.scores, self.weights
        for i, target in enumerate(self.targets):
            scores[i] += weights[i]
            if target in exclude:
                continue
            if best < 0 or scores[i] > scores[best]:
                best = i
        if best < 0:        # every target excluded: fall back to the plain choice
            best = max(range(len(scores)), key=scores.__getitem__)
        scores[best] -= self.total
        return self.targets[best]
