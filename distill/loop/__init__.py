"""The closed loop: rounds of the same stages over a teacher budget. Each round selects the prompts the student of
the round before most needs (select), the teacher answers only those (generate), then filter, train (continuing the
adapter) and evaluate on the dev split run as in any run, in the round's own folder under runs/<name>/loop/."""
