"""From a run's rows to what is published: the datasets, the summary and the Hub push."""
