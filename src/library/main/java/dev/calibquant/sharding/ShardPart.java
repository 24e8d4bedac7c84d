package dev.calibquant.sharding;

import dev.calibquant.cache.Sequence;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A shard's part of a batch: the batch positions it holds ({@code items}), its sequences for them, and the head
 * range (of the tensor's {@code allHeads}) it takes of each item.
 */
record ShardPart(int shard, int[] items, List<Sequence> sequences, int firstHead, int heads) {
    /** Whether this part is the whole batch, in order, with all heads: the caller's segments serve as they are. */
    boolean coversAll(int batch, int allHeads) {
        if (heads != allHeads || items.length != batch) {
            return false;
        }
        for (int j = 0; j < items.length; j++) {
            if (items[j] != j) {
                return false;
            }
        }
        return true;
    }

    /** The batch cut by shard: by sequence, each shard its sequences; BY_KV_HEAD, each shard its heads of all. */
    static List<ShardPart> split(Placement placement, int shards, List<ShardedSequence> batch, int allHeads) {
        List<ShardPart> split = new ArrayList<>();
        if (!placement.bySequence()) {
            int heads = allHeads / shards;
            int[] all = new int[batch.size()];
            for (int b = 0; b < all.length; b++) {
                all[b] = b;
            }
            for (int i = 0; i < shards; i++) {
                int shard = i;
                split.add(new ShardPart(i, all, batch.stream().map(s -> s.parts()[shard]).toList(), i * heads, heads));
            }
            return split;
        }
        Map<Integer, List<Integer>> byShard = new LinkedHashMap<>();
        for (int b = 0; b < batch.size(); b++) {
            byShard.computeIfAbsent(batch.get(b).shardIndexes()[0], k -> new ArrayList<>()).add(b);
        }
        for (Map.Entry<Integer, List<Integer>> e : byShard.entrySet()) {
            int[] items = e.getValue().stream().mapToInt(Integer::intValue).toArray();
            List<Sequence> sequences = new ArrayList<>(items.length);
            for (int b : items) {
                sequences.add(batch.get(b).parts()[0]);
            }
            split.add(new ShardPart(e.getKey(), items, sequences, 0, allHeads));
        }
        return split;
    }
}
