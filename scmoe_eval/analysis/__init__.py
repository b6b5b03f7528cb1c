"""The paper's exploratory study (§3) as analyses of `scmoe-eval-analyze`: `kld` (Tab. 5), `unchosen`
(Tab. 6), `heatmap` (Fig. 3) and `routing` (expert load and strong/weak overlap). docs/analysis.md."""
