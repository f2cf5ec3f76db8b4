"""`curate serve`: one local web app to review the dataset and to play with the generator."""
