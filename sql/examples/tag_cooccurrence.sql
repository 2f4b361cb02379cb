-- Pairs of predicted tags that appear on the same image, most frequent first.
-- instatag sql sql/examples/tag_cooccurrence.sql
SELECT a.label AS tag_a,
       b.label AS tag_b,
       count(DISTINCT a.image_id) AS images
FROM predicted_tags a
JOIN predicted_tags b ON a.image_id = b.image_id AND a.post = b.post AND a.label < b.label
GROUP BY a.label, b.label
ORDER BY images DESC, tag_a, tag_b
LIMIT 20;
