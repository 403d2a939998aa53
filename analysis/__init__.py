"""Analysis: reads run folders back into the paper's tables (never imports training code)."""
