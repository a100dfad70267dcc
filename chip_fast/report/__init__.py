"""What people look at: the HTML page shell and class labels (``page``), and heat maps drawn on
photos (``overlay``)."""
