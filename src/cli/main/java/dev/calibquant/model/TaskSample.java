package dev.calibquant.model;

import java.util.List;

/**
 * One sample of the scene task: the scene, its image, a question about it and the true answer.
 *
 * @param index the sample's number in its task stream
 * @param objects the scene's shapes, 1 to 5
 * @param type the kind of question
 * @param image {@code [64][64][3]} RGB bytes
 * @param question the question's tokens (without the chat template around it)
 * @param answer the true answer's tokens, ending with {@code <eos>}
 */
public record TaskSample(long index, List<SceneObject> objects, QuestionType type, byte[] image, int[] question,
        int[] answer) {

    public String questionText() {
        return Vocabulary.text(question);
    }

    public String answerText() {
        return Vocabulary.text(answer);
    }
}
