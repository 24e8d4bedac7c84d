package dev.calibquant.regression;

import static org.assertj.core.api.Assertions.assertThat;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.util.List;
import javax.xml.parsers.DocumentBuilderFactory;
import org.junit.jupiter.api.Test;
import org.w3c.dom.Document;
import org.w3c.dom.Element;
import org.w3c.dom.NodeList;

class JUnitXmlReportTest {

    @Test
    void theReportIsWellFormedJUnitXmlWithEveryOutcomeAndEscapedText() throws Exception {
        String nasty = "out[0] <GPU> & \"CPU\" 'differ'\u0001 by 3×";
        RegressionSuite.Report report = new RegressionSuite.Report("sm_90a", "NVIDIA H200", List.of(
                new RegressionSuite.KernelResult("k_pass", RegressionSuite.Status.PASS, 0.1, "2 cases", 0.25),
                new RegressionSuite.KernelResult("k_fail", RegressionSuite.Status.FAIL, 3, nasty, 0.5),
                new RegressionSuite.KernelResult("k_none", RegressionSuite.Status.NO_EXPECTATIONS, Double.NaN, "none", 0),
                new RegressionSuite.KernelResult("k_skip", RegressionSuite.Status.NOT_LOADABLE, Double.NaN,
                        "too old a driver", 0)));
        RegressionSuite.Report other = new RegressionSuite.Report("sm_80", "NVIDIA H200", List.of(
                new RegressionSuite.KernelResult("k_pass", RegressionSuite.Status.PASS, 0, "bit-identical", 0.1)));
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        JUnitXmlReport.write(List.of(report, other), bytes);

        Document doc = DocumentBuilderFactory.newInstance().newDocumentBuilder()
                .parse(new ByteArrayInputStream(bytes.toByteArray()));
        NodeList suites = doc.getElementsByTagName("testsuite");
        assertThat(suites.getLength()).isEqualTo(2);
        Element suite = (Element) suites.item(0);
        assertThat(suite.getAttribute("name")).isEqualTo("calibquant.regression.sm_90a");
        assertThat(suite.getAttribute("tests")).isEqualTo("4");
        assertThat(suite.getAttribute("failures")).isEqualTo("2");
        assertThat(suite.getAttribute("skipped")).isEqualTo("1");
        assertThat(suite.getAttribute("errors")).isEqualTo("0");
        assertThat(suite.getAttribute("time")).isEqualTo("0.750");
        NodeList cases = suite.getElementsByTagName("testcase");
        assertThat(cases.getLength()).isEqualTo(4);
        Element fail = (Element) cases.item(1);
        assertThat(fail.getAttribute("name")).isEqualTo("k_fail");
        Element failure = (Element) fail.getElementsByTagName("failure").item(0);
        assertThat(failure.getAttribute("type")).isEqualTo("FAIL");
        assertThat(failure.getAttribute("message")).isEqualTo("FAIL: out[0] <GPU> & \"CPU\" 'differ'? by 3×");
        assertThat(failure.getTextContent()).isEqualTo("out[0] <GPU> & \"CPU\" 'differ'? by 3×");
        Element none = (Element) ((Element) cases.item(2)).getElementsByTagName("failure").item(0);
        assertThat(none.getAttribute("type")).isEqualTo("NO_EXPECTATIONS");
        Element skipped = (Element) ((Element) cases.item(3)).getElementsByTagName("skipped").item(0);
        assertThat(skipped.getAttribute("message")).isEqualTo("not loadable here: too old a driver");
        assertThat(((Element) cases.item(0)).getElementsByTagName("failure").getLength()).isZero();
        assertThat(((Element) suites.item(1)).getAttribute("failures")).isEqualTo("0");
    }
}
