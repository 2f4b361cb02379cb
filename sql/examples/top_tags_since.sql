-- Top predicted tags of the images scored since the parameter since (e.g. a week ago).
-- instatag sql sql/examples/top_tags_since.sql -p since=2026-11-21
SELECT label,
       count(*)          AS images,
       avg(probability)  AS mean_probability
FROM predicted_tags
WHERE scored_at >= :since
GROUP BY label
ORDER BY images DESC, label
LIMIT 20;
