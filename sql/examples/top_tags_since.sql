-- Top predicted tags of the images scored since the parameter since (e.g. a week ago); posts
-- counts re-posts too, and the mean probability is over posts.
-- instatag sql sql/examples/top_tags_since.sql -p since=2026-11-21
SELECT label,
       count(DISTINCT image_id) AS images,
       count(*)                 AS posts,
       avg(probability)         AS mean_probability
FROM predicted_tags
WHERE scored_at >= :since
GROUP BY label
ORDER BY images DESC, label
LIMIT 20;
