-- Two relations stacked by column name; columns missing on one side are NULL.
SELECT * FROM union_left
UNION ALL BY NAME
SELECT * FROM union_right
