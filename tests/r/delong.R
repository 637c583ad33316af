# Independent reference for medclass.metrics.delong: pROC's DeLong variance, CI and paired test.
# Usage: Rscript tests/r/delong.R in.csv   (columns y (0/1), a, b: two scores of the same cases)
# Prints name=value lines with 17 significant digits.
args <- commandArgs(trailingOnly = TRUE)
suppressPackageStartupMessages(library(pROC))
d <- read.csv(args[1])
ra <- roc(d$y, d$a, levels = c(0, 1), direction = "<", quiet = TRUE)
rb <- roc(d$y, d$b, levels = c(0, 1), direction = "<", quiet = TRUE)
ca <- ci.auc(ra, method = "delong", conf.level = 0.95)
t <- roc.test(ra, rb, paired = TRUE, method = "delong")
out <- c(
  auc_a = as.numeric(auc(ra)), auc_b = as.numeric(auc(rb)),
  var_a = var(ra, method = "delong"), var_b = var(rb, method = "delong"),
  ci_low_a = ca[1], ci_high_a = ca[3],
  z = unname(t$statistic), p_value = t$p.value
)
if (!is.null(t$conf.int)) {
  out <- c(out, diff_ci_low = t$conf.int[1], diff_ci_high = t$conf.int[2])
}
cat(sprintf("%s=%.17g\n", names(out), out), sep = "")
cat(sprintf("pROC=%s\n", as.character(packageVersion("pROC"))))
